#!/usr/bin/env bash
# Builds the crate and an example without `--cfg tokio_unstable` (RUSTFLAGS overrides the
# project's .cargo/config.toml) and checks the start-up warning says what is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="" RUSTDOCFLAGS=""
target=target/without-tokio-unstable
cargo clippy --lib --all-features --target-dir "$target" -- -D warnings
cargo build --example blocking_in_async --target-dir "$target"
out=$(NO_COLOR=1 STALLSCOPE_CONSOLE=on "$target/debug/examples/blocking_in_async" --variant cpu 2>&1)
echo "$out" | grep -q 'built without `--cfg tokio_unstable`' || {
  echo "expected the start-up warning about tokio_unstable; got:"; echo "$out"; exit 1; }
count=$(echo "$out" | grep -c 'built without `--cfg tokio_unstable`')
[ "$count" = 1 ] || { echo "the warning must appear once, appeared $count times"; exit 1; }
echo "$out" | grep -q 'cpu variant done' || { echo "the example did not run to the end:"; echo "$out"; exit 1; }
echo "ok: builds without tokio_unstable and says so once"
