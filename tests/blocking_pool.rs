//! Blocking-pool starvation: per-job queue waits per call site, the pool gauges, the episode
//! report, all from the scenario example run as a user runs it, exported to VictoriaMetrics;
//! and the episode's lines in the log, whose numbers must tell one story.

mod support;

use std::time::Duration;

use support::examples::{self, OutputWithin};
use support::victoria::VictoriaMetrics;

const SITE: &str = r#"code_file_path="examples/blocking_pool_starvation.rs""#;

fn run(vm: &VictoriaMetrics, service: &str, args: &[&str]) -> String {
    let output = examples::command("blocking_pool_starvation")
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", vm.otlp_endpoint())
        .env("OTEL_METRIC_EXPORT_INTERVAL", "100")
        .env("OTEL_SERVICE_NAME", service)
        .env("STALLSCOPE_SAMPLE_INTERVAL", "50ms")
        // Bounds 100 ms apart, centred on the expected waits 0, 200 and 400 ms.
        .env(
            "STALLSCOPE_HISTOGRAM_BOUNDS",
            "0.05,0.15,0.25,0.35,0.45,0.55,0.65",
        )
        .output_within(Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

fn value(vm: &VictoriaMetrics, promql: &str) -> f64 {
    let samples = vm.wait_for(promql, Duration::from_secs(10));
    assert_eq!(samples.len(), 1, "one series for {promql}: {samples:?}");
    samples[0].value
}

#[test]
fn queue_waits_step_up_one_job_length_per_wave_and_the_queue_depth_peaks_at_m_minus_n() {
    check_waves("starvation-test", &[]);
}

#[test]
fn production_mode_measures_the_same_waves_through_the_spawn_blocking_drop_in() {
    check_waves("starvation-production", &["--production"]);
}

fn check_waves(service: &str, mode: &[&str]) {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    // N = 2 pool threads, M = 6 jobs of 200 ms: three waves waiting ~0, ~200 and ~400 ms.
    let mut args = vec!["--jobs", "6", "--pool", "2", "--job-ms", "200"];
    args.extend_from_slice(mode);
    let stderr = run(&vm, service, &args);

    let sel = format!(r#"service_name="{service}",{SITE}"#);
    let le = |bound: &str| {
        value(
            &vm,
            &format!("tokio_blocking_job_wait_duration_seconds_bucket{{{sel},le=\"{bound}\"}}"),
        )
    };
    assert_eq!(le("0.05"), 2.0, "wave 0 starts at once");
    assert_eq!(
        le("0.25") - le("0.15"),
        2.0,
        "wave 1 waits one job length (200 ms ± 50)"
    );
    assert_eq!(
        le("0.45") - le("0.35"),
        2.0,
        "wave 2 waits two job lengths (400 ms ± 50)"
    );
    assert_eq!(le("+Inf"), 6.0, "every job counted once");
    let run_sum = value(
        &vm,
        &format!("tokio_blocking_job_run_duration_seconds_sum{{{sel}}}"),
    );
    assert!((1.19..1.6).contains(&run_sum), "six 200 ms runs: {run_sum}");
    assert_eq!(
        value(&vm, &format!("tokio_blocking_jobs_total{{{sel}}}")),
        6.0
    );
    assert_eq!(
        value(
            &vm,
            &format!("tokio_blocking_job_slow_waits_total{{{sel}}}")
        ),
        4.0
    );

    // Pool gauges: the queue reached M - N, both threads busy, the runtime's workers excluded.
    let svc = format!(r#"service_name="{service}""#);
    assert_eq!(
        value(
            &vm,
            &format!("max_over_time(tokio_blocking_queue_depth{{{svc}}}[10m])")
        ),
        4.0
    );
    assert_eq!(
        value(
            &vm,
            &format!(r#"max_over_time(tokio_blocking_threads{{{svc},state="busy"}}[10m])"#)
        ),
        2.0
    );
    vm.wait_for(
        &format!(r#"tokio_blocking_threads{{{svc},state="idle"}}"#),
        Duration::from_secs(5),
    );

    // The report: one line when the episode began, one when it ended, and the summary.
    let began: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("blocking pool starved"))
        .collect();
    assert_eq!(began.len(), 1, "once per episode:\n{stderr}");
    assert!(began[0].contains("2 of 2 threads busy"), "{}", began[0]);
    assert!(
        began[0].contains("examples/blocking_pool_starvation.rs:"),
        "{}",
        began[0]
    );
    assert!(
        began[0].contains("max_blocking_threads"),
        "hint: {}",
        began[0]
    );
    assert_eq!(
        stderr.matches("blocking pool starvation over").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "summary: blocking-pool queue wait #1 at examples/blocking_pool_starvation.rs:"
        ) && stderr.contains("slow_waits=4 jobs=6"),
        "summary:\n{stderr}"
    );
    // Long blocking runs are expected: they are not reported as slow polls.
    assert!(!stderr.contains("slow poll:"), "{stderr}");
}

#[test]
fn a_pool_sized_for_the_load_has_no_waits() {
    let Some(vm) = VictoriaMetrics::start() else {
        return;
    };
    let stderr = run(
        &vm,
        "starvation-fixed",
        &["--fixed", "--jobs", "6", "--job-ms", "200"],
    );
    assert!(!stderr.contains("blocking pool starved"), "{stderr}");
    assert!(!stderr.contains("blocking-pool queue wait"), "{stderr}");
    let sel = format!(r#"service_name="starvation-fixed",{SITE}"#);
    assert_eq!(
        value(
            &vm,
            &format!("tokio_blocking_job_wait_duration_seconds_bucket{{{sel},le=\"0.05\"}}")
        ),
        6.0,
        "every job started at once"
    );
}

/// The example's log when run with `args` and no exporter.
fn log_of(args: &[&str], sample_interval: Option<&str>) -> String {
    let mut command = examples::command("blocking_pool_starvation");
    command.args(args);
    if let Some(interval) = sample_interval {
        command.env("STALLSCOPE_SAMPLE_INTERVAL", interval);
    }
    let output = command.output_within(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

/// The number just before `suffix` in `line` (`"47 jobs queued"`, `" jobs queued"` -> 47).
fn number_before(line: &str, suffix: &str) -> u64 {
    let end = line
        .find(suffix)
        .unwrap_or_else(|| panic!("{suffix:?} in {line}"));
    let digits = line[..end]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number before {suffix:?} in {line}"))
}

fn check_one_moment(mode: &[&str]) {
    // 20 jobs of 300 ms on 2 threads, the sampler at its default 1 s: the first slow wait
    // (300 ms in) begins the episode before any sample of the pool.
    let mut args = vec!["--jobs", "20", "--pool", "2", "--job-ms", "300"];
    args.extend_from_slice(mode);
    let stderr = log_of(&args, None);
    let began = stderr
        .lines()
        .find(|l| l.contains("blocking pool starved"))
        .unwrap_or_else(|| panic!("no episode:\n{stderr}"));
    assert!(began.contains("a spawn_blocking job waited"), "{began}");
    // tokio's gauges, read when the call sites were: both threads busy, the rest queued.
    assert!(began.contains("2 of 2 threads busy"), "{began}");
    let pool_queued = number_before(began, " jobs queued, ");
    assert!((12..=18).contains(&pool_queued), "{began}");
    // The call sites' counts say whose they are, and agree (or say why not).
    let sites = &began[began.find("call_sites=").expect("a call_sites field")..];
    let queued = &sites[sites.find("queued: ").expect("the queued call sites")..];
    let site_queued = number_before(queued, " jobs)");
    assert!(
        began.contains("By call site (jobs stallscope saw spawned"),
        "{began}"
    );
    assert!(
        site_queued <= pool_queued || began.contains("more than tokio's gauges show"),
        "{began}"
    );
}

#[test]
fn the_starvation_line_reads_the_pool_and_its_call_sites_at_one_moment() {
    check_one_moment(&[]);
}

#[test]
fn the_starvation_line_reads_the_pool_and_its_call_sites_at_one_moment_in_production_mode() {
    check_one_moment(&["--production"]);
}

#[test]
fn production_mode_with_tokios_own_spawn_blocking_says_what_it_knows_and_what_it_does_not() {
    let stderr = log_of(
        &[
            "--production",
            "--tokio-spawn-blocking",
            "--jobs",
            "8",
            "--pool",
            "2",
            "--job-ms",
            "300",
        ],
        Some("50ms"),
    );
    let line = |needle: &str| {
        stderr
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} line:\n{stderr}"))
    };
    let says = |line: &str, parts: &[&str]| {
        for part in parts {
            assert!(line.contains(part), "{part:?} in: {line}");
        }
    };
    says(
        line("blocking pool starved"),
        &[
            "2 of 2 threads busy",
            "not known",
            "stallscope::task::spawn_blocking",
        ],
    );
    // No per-job wait was measured: none is printed as a zero.
    let ended = line("blocking pool starvation over");
    says(
        ended,
        &[
            "how long its jobs waited is not known",
            "stallscope::task::spawn_blocking",
            "up to 6 jobs queued, 2 threads at most",
        ],
    );
    assert!(
        !ended.contains("0 jobs waited")
            && !ended.contains("longest")
            && !ended.contains("slow_waits"),
        "{ended}"
    );
    // The summary has the pool, as far as it is known.
    says(
        line("summary: blocking pool:"),
        &[
            "up to 6 jobs queued, 2 threads at most",
            "how long jobs waited is not known",
        ],
    );
}
