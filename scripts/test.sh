#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Installs what the tests need (VictoriaMetrics, the real OTLP receiver), validates the docker
# compose stack's files with their own tools (installing those too), then checks formatting,
# lints, every test, and that the crate builds and degrades without tokio_unstable.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "test services: VictoriaMetrics"
scripts/victoria-metrics.sh
# A plain `cargo test` skips the tests that need it when it is missing; here they must run.
export STALLSCOPE_REQUIRE_VICTORIA_METRICS=1

step "stack files: docker compose config, promtool check config, dashboards against Grafana's schema"
scripts/check-stack.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo clippy --lib --no-default-features (the lean build) -- -D warnings"
cargo clippy --lib --no-default-features -- -D warnings

step "cargo test (unit, integration, doc tests; builds the examples the tests run)"
cargo test

step "production-mode hot path: instructions per poll under callgrind (no wall clock)"
scripts/hot-path-guard.sh

step "full mode: instructions the layer adds per poll, per tokio Mutex lock and per spawned task under callgrind"
scripts/full-mode-guard.sh

step "without --cfg tokio_unstable: builds, says what is unavailable, keeps runtime metrics"
scripts/check-without-tokio-unstable.sh
