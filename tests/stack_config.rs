//! The docker compose stack's files fit together: the collector names only components of the
//! pinned otelcol-contrib and sends each signal to a service that listens for it, Tempo's config
//! uses only keys of the pinned Tempo, Grafana's data sources point at the services and every
//! data source a dashboard or a link refers to is provisioned, and the images are pinned.
//!
//! scripts/check-stack.sh validates the same files with their own tools (docker compose,
//! promtool, Grafana's dashboard schema); this test covers what those tools cannot see.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A YAML file as JSON values (so both kinds of file are handled alike).
fn yaml(path: &str) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_object(), "docker-compose.yml: no service {name}");
    service
}

/// The tag of a service's image (`repo:tag`).
fn image_tag(compose: &Value, name: &str) -> String {
    let image = service(compose, name)["image"].as_str().expect("image");
    image.rsplit_once(':').expect("a tag").1.to_owned()
}

/// `HOST:CONTAINER` port mappings of a service, as (host, container).
fn ports(compose: &Value, name: &str) -> Vec<(u16, u16)> {
    service(compose, name)["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let (host, container) = p.as_str().unwrap().split_once(':').unwrap();
            (host.parse().unwrap(), container.parse().unwrap())
        })
        .collect()
}

/// The command-line words of a service (`command` as a list).
fn command(compose: &Value, name: &str) -> Vec<String> {
    service(compose, name)["command"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: command as a list"))
        .iter()
        .map(|w| w.as_str().unwrap().to_owned())
        .collect()
}

/// `SOURCE:TARGET[:ro]` volumes of a service, as (source, target).
fn volumes(compose: &Value, name: &str) -> Vec<(String, String)> {
    service(compose, name)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let mut parts = v.as_str().unwrap().split(':');
            (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Splits `host:port` (optionally with a scheme and a path) into host and port.
fn host_port(endpoint: &str) -> (String, u16) {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').expect("host:port");
    (host.to_owned(), port.parse().expect("port"))
}

/// Every leaf of a YAML document as a dotted path (`[]` for list items).
fn leaf_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                leaf_paths(child, &join(key), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                leaf_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

/// Lines of a list file under tests/stack/, without comments and blank lines.
fn list_file(name: &str) -> Vec<String> {
    let path = format!("tests/stack/{name}");
    assert!(
        repo().join(&path).is_file(),
        "{path} is missing: the list for the pinned version (see the other files there)"
    );
    read(&path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn images_are_pinned_and_ports_published() {
    let compose = compose();
    for (name, service) in compose["services"].as_object().unwrap() {
        let Some(image) = service["image"].as_str() else {
            continue;
        };
        if service.get("build").is_some() {
            continue; // built here from this repository (the examples profile)
        }
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
        assert!(
            tag.chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == 'v')
                && tag.contains('.')
                && tag != "latest",
            "{name}: image {image:?} must be pinned to a release"
        );
    }
    for (name, port) in [
        ("grafana", 3000),
        ("prometheus", 9090),
        ("tempo", 3200),
        ("otel-collector", 4317),
        ("otel-collector", 4318),
    ] {
        assert!(
            ports(&compose, name).contains(&(port, port)),
            "{name} publishes {port}"
        );
    }
    // Bind-mounted files and folders exist.
    for name in compose["services"].as_object().unwrap().keys() {
        for (source, target) in volumes(&compose, name) {
            if source.starts_with("./") {
                assert!(
                    repo().join(&source).exists(),
                    "{name}: {source} -> {target}"
                );
            } else {
                assert!(
                    compose["volumes"].get(&source).is_some(),
                    "{name}: named volume {source}"
                );
            }
        }
    }
}

#[test]
fn the_examples_profile_runs_every_example_against_the_collector() {
    let compose = compose();
    let dockerfile = read("deploy/examples.Dockerfile");
    let mut examples: Vec<String> = std::fs::read_dir(repo().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "{examples:?}");
    for example in &examples {
        let name = format!("example-{}", example.replace('_', "-"));
        let service = service(&compose, &name);
        assert_eq!(service["profiles"][0], "examples", "{name}");
        assert_eq!(
            service["build"]["dockerfile"], "deploy/examples.Dockerfile",
            "{name}"
        );
        assert_eq!(service["command"][0], example.as_str(), "{name}");
        let env = &service["environment"];
        assert_eq!(env["OTEL_SERVICE_NAME"], example.as_str(), "{name}");
        let (host, port) = host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str().unwrap());
        assert_eq!(host, "otel-collector", "{name}");
        assert!(
            ports(&compose, "otel-collector")
                .iter()
                .any(|p| p.1 == port),
            "{name}: the collector listens on {port}"
        );
        assert!(
            dockerfile.contains(&format!("/src/target/release/examples/{example} ")),
            "deploy/examples.Dockerfile copies {example}"
        );
    }
    // The build context leaves out the build output and the tools (gigabytes).
    let ignore = read(".dockerignore");
    for entry in ["target/", ".tools/"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore: {entry}");
    }
}

#[test]
fn collector_uses_components_of_the_pinned_distribution_and_reaches_the_backends() {
    let compose = compose();
    let version = image_tag(&compose, "otel-collector");
    let known: BTreeSet<String> = list_file(&format!("otelcol-contrib-{version}-components.txt"))
        .into_iter()
        .collect();
    let config = yaml("deploy/otel-collector.yaml");

    let mut defined = BTreeSet::new();
    for kind in [
        "receivers",
        "processors",
        "exporters",
        "extensions",
        "connectors",
    ] {
        for id in config[kind].as_object().into_iter().flatten().map(|c| c.0) {
            let component = id.split('/').next().unwrap();
            let singular = kind.trim_end_matches('s');
            assert!(
                known.contains(&format!("{singular} {component}")),
                "deploy/otel-collector.yaml: {singular} {component:?} ({id}) is not a component of otelcol-contrib {version} (tests/stack/)"
            );
            defined.insert((kind, id.clone()));
        }
    }

    let pipelines = config["service"]["pipelines"]
        .as_object()
        .expect("pipelines");
    let mut used = BTreeSet::new();
    for (pipeline, spec) in pipelines {
        for kind in ["receivers", "processors", "exporters"] {
            for id in spec[kind].as_array().into_iter().flatten() {
                let id = id.as_str().unwrap().to_owned();
                assert!(
                    defined.contains(&(kind, id.clone())),
                    "pipeline {pipeline}: {kind} {id} is not defined"
                );
                used.insert((kind, id));
            }
        }
        assert!(
            !spec["receivers"].as_array().unwrap().is_empty()
                && !spec["exporters"].as_array().unwrap().is_empty(),
            "pipeline {pipeline}"
        );
    }
    let unused: Vec<_> = defined.difference(&used).collect();
    assert!(unused.is_empty(), "defined but in no pipeline: {unused:?}");
    let signals: BTreeSet<&str> = pipelines
        .keys()
        .map(|p| p.split('/').next().unwrap())
        .collect();
    assert_eq!(
        signals,
        BTreeSet::from(["metrics", "traces"]),
        "stallscope exports metrics and a span per stall"
    );

    // The receivers listen on the published ports, on every interface of the container.
    for (protocol, port) in [("grpc", 4317), ("http", 4318)] {
        let endpoint = config["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
            .as_str()
            .unwrap();
        assert_eq!(endpoint, format!("0.0.0.0:{port}"), "otlp {protocol}");
    }

    // Each exporter reaches a service that listens there.
    let exporters = config["exporters"].as_object().unwrap();
    let metrics = &exporters[pipelines["metrics"]["exporters"][0].as_str().unwrap()];
    let endpoint = metrics["endpoint"].as_str().unwrap();
    assert_eq!(
        host_port(endpoint),
        ("prometheus".to_owned(), 9090),
        "{endpoint}"
    );
    assert!(endpoint.ends_with("/api/v1/otlp"), "{endpoint}");
    assert!(command(&compose, "prometheus").contains(&"--web.enable-otlp-receiver".to_owned()));

    let traces = &exporters[pipelines["traces"]["exporters"][0].as_str().unwrap()];
    let (host, port) = host_port(traces["endpoint"].as_str().unwrap());
    assert_eq!(host, "tempo");
    let tempo = yaml("deploy/tempo.yaml");
    let tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .unwrap();
    assert_eq!(
        host_port(tempo_grpc).1,
        port,
        "the collector sends traces where Tempo's OTLP/gRPC receiver listens"
    );
    for (id, exporter) in exporters {
        assert_eq!(
            exporter["tls"]["insecure"], true,
            "{id}: plain connections inside the compose network"
        );
    }
}

#[test]
fn tempo_config_uses_keys_of_the_pinned_tempo_and_fits_the_stack() {
    let compose = compose();
    let version = image_tag(&compose, "tempo");
    let known: Vec<Vec<String>> = list_file(&format!("tempo-{version}-config-keys.txt"))
        .iter()
        .map(|l| l.split('.').map(str::to_owned).collect())
        .collect();
    let tempo = yaml("deploy/tempo.yaml");
    let mut paths = Vec::new();
    leaf_paths(&tempo, "", &mut paths);
    for path in &paths {
        let segments: Vec<&str> = path.split('.').collect();
        let matches = known.iter().any(|k| {
            k.len() == segments.len() && k.iter().zip(&segments).all(|(k, s)| k == "*" || k == s)
        });
        assert!(
            matches,
            "deploy/tempo.yaml: {path} is not a key of Tempo {version} (tests/stack/)"
        );
    }

    let processors: Vec<&str> = tempo["overrides"]["defaults"]["metrics_generator"]["processors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in &processors {
        assert!(
            ["service-graphs", "span-metrics", "local-blocks"].contains(p),
            "metrics-generator processor {p}"
        );
    }

    // Grafana queries Tempo on the port it serves and compose publishes.
    let http = tempo["server"]["http_listen_port"].as_u64().unwrap() as u16;
    assert!(ports(&compose, "tempo").contains(&(http, http)));
    for protocol in ["grpc", "http"] {
        let endpoint = tempo["distributor"]["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
            .as_str()
            .unwrap();
        assert!(
            endpoint.starts_with("0.0.0.0:"),
            "{protocol}: Tempo 2.7+ binds localhost by default; the collector is another container"
        );
    }

    // Span metrics are remote-written to Prometheus, which must accept them (and exemplars).
    let remote = tempo["metrics_generator"]["storage"]["remote_write"][0]["url"]
        .as_str()
        .unwrap();
    assert_eq!(host_port(remote), ("prometheus".to_owned(), 9090));
    assert!(remote.ends_with("/api/v1/write"), "{remote}");
    let prometheus = command(&compose, "prometheus");
    for flag in [
        "--web.enable-remote-write-receiver",
        "--enable-feature=exemplar-storage",
    ] {
        assert!(
            prometheus.iter().any(|w| w == flag),
            "prometheus needs {flag}"
        );
    }

    // Everything Tempo writes lives on its volume.
    let data = volumes(&compose, "tempo")
        .into_iter()
        .find(|(source, _)| !source.starts_with("./"))
        .expect("a named volume for Tempo's data")
        .1;
    for path in paths.iter().filter(|p| p.ends_with(".path")) {
        let value = path
            .split('.')
            .try_fold(&tempo, |v, k| v.get(k))
            .and_then(Value::as_str)
            .unwrap();
        assert!(
            Path::new(value).starts_with(&data),
            "{path} = {value} is outside the volume {data}"
        );
    }
}

#[test]
fn grafana_provisioning_points_at_the_services_and_every_referenced_datasource_exists() {
    let compose = compose();
    let provisioning = "deploy/grafana/provisioning";
    let datasources = yaml(&format!("{provisioning}/datasources/datasources.yaml"));
    // Grafana expands $NAME and ${NAME} in provisioning values: a query's $__tags must be
    // written $$__tags, or it reaches the data source as an empty string.
    let mut strings = Vec::new();
    string_values(&datasources, &mut strings);
    for s in strings {
        for (i, _) in s.match_indices("$__") {
            assert!(
                i > 0 && &s[i - 1..i] == "$",
                "datasources.yaml: write $$__ for a literal $__ in {s:?}"
            );
        }
    }
    let mut by_uid = BTreeMap::new();
    for ds in datasources["datasources"].as_array().unwrap() {
        let uid = ds["uid"]
            .as_str()
            .expect("every data source has a fixed uid");
        let kind = ds["type"].as_str().unwrap();
        assert!(
            by_uid.insert(uid.to_owned(), kind.to_owned()).is_none(),
            "duplicate uid {uid}"
        );
        let (host, port) = host_port(ds["url"].as_str().unwrap());
        assert!(
            ports(&compose, &host).iter().any(|p| p.1 == port),
            "{uid}: {host}:{port} is not a port of a compose service"
        );
    }
    assert_eq!(
        by_uid.get("prometheus").map(String::as_str),
        Some("prometheus")
    );
    assert_eq!(by_uid.get("tempo").map(String::as_str), Some("tempo"));

    // Links between data sources.
    let mut linked = Vec::new();
    for ds in datasources["datasources"].as_array().unwrap() {
        let json = &ds["jsonData"];
        linked.extend(json["tracesToMetrics"]["datasourceUid"].as_str());
        linked.extend(json["serviceMap"]["datasourceUid"].as_str());
        for dest in json["exemplarTraceIdDestinations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            linked.extend(dest["datasourceUid"].as_str());
        }
    }
    assert!(
        linked.len() >= 2,
        "traces-to-metrics and exemplar links: {linked:?}"
    );
    for uid in linked {
        assert!(
            by_uid.contains_key(uid),
            "link to unknown data source {uid}"
        );
    }

    // Dashboards: provisioned from where compose mounts them; every data source they use exists.
    let provider = yaml(&format!("{provisioning}/dashboards/stallscope.yaml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert!(
        volumes(&compose, "grafana").contains(&("./dashboards".to_owned(), path.to_owned())),
        "the provider reads {path}, where compose mounts ./dashboards"
    );
    let home = service(&compose, "grafana")["environment"]
        ["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    let home_file = home
        .strip_prefix(&format!("{path}/"))
        .expect("home dashboard under the provider's path");
    assert!(
        repo().join("dashboards").join(home_file).is_file(),
        "{home}"
    );

    for entry in std::fs::read_dir(repo().join("dashboards")).unwrap() {
        let file = entry.unwrap().path();
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for var in board["templating"]["list"].as_array().unwrap() {
            if var["type"] == "datasource" {
                let kind = var["query"].as_str().unwrap();
                assert!(
                    by_uid.values().any(|k| k == kind),
                    "{name}: no {kind} data source for ${}",
                    var["name"].as_str().unwrap()
                );
                if let Some(uid) = var["current"]["value"].as_str() {
                    assert_eq!(by_uid.get(uid).map(String::as_str), Some(kind), "{name}");
                }
            }
        }
        let mut refs = Vec::new();
        datasource_refs(&board, &mut refs);
        assert!(!refs.is_empty(), "{name}");
        for uid in refs {
            assert!(
                uid == "${datasource}" || by_uid.contains_key(&uid),
                "{name}: data source {uid:?} is not provisioned"
            );
        }
    }
}

/// Every string value in a document.
fn string_values<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Object(map) => map.values().for_each(|v| string_values(v, out)),
        Value::Array(items) => items.iter().for_each(|v| string_values(v, out)),
        _ => {}
    }
}

/// Every `datasource.uid` in a dashboard (panels, targets, variables, annotations).
fn datasource_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(uid) = map.get("datasource").and_then(|d| d["uid"].as_str()) {
                out.push(uid.to_owned());
            }
            for child in map.values() {
                datasource_refs(child, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| datasource_refs(i, out)),
        _ => {}
    }
}
