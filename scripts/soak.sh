#!/usr/bin/env bash
# Soak: runs every example with OTLP export and tokio-console on, sampling its memory
# (tests/soak.rs), for longer than the suite does.
#   scripts/soak.sh                  # 5 minutes each, 1 minute of console retention
#   scripts/soak.sh 600 2m           # 10 minutes each, 2 minutes of retention
# Memory must level off once the retention has passed, and grow by at most the bound per
# minute of retention that README.md's "Operating in production" states.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
retention=${2:-60s}
STALLSCOPE_SOAK_SECONDS=$seconds STALLSCOPE_SOAK_RETENTION=$retention \
  cargo test --test soak -- --nocapture --test-threads=1
