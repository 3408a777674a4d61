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

step "the declared rust-version covers the dependency graph (default, otlp, console)"
scripts/check-msrv.py

step "README and docs: every relative link and #anchor resolves"
scripts/check-links.py

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

step "every feature alone and none, warnings denied (cargo hack; _otlp is the private base of the OTLP features)"
command -v cargo-hack >/dev/null || cargo install cargo-hack --locked
RUSTFLAGS="--cfg tokio_unstable -D warnings" \
  cargo hack check --each-feature --no-dev-deps --exclude-features _otlp --target-dir target/features

step "cargo doc as docs.rs builds it, warnings denied"
RUSTDOCFLAGS="--cfg docsrs --cfg tokio_unstable -D warnings" \
  cargo doc --no-deps --all-features --target-dir target/doc-check

step "the package: library, docs and licenses only; cargo publish --dry-run without warnings"
scripts/check-package.sh
