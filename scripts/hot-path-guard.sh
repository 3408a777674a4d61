#!/usr/bin/env bash
# Guards production mode's per-poll cost with a measure that does not drift: the instructions
# executed inside stallscope's poll hooks, counted by callgrind on a deterministic workload
# (200,100 polls of yield_now on a current-thread runtime). Fails when the count per poll rises
# clearly above the recorded figure in bench/hot-path-instructions-per-poll.
# Wall-clock ratios live in scripts/bench.sh, never in a pass/fail check.
set -euo pipefail
cd "$(dirname "$0")/.."
recorded=$(cat bench/hot-path-instructions-per-poll)
tolerance=${HOT_PATH_TOLERANCE:-1.15}

command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)"; exit 1; }
(cd bench && RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=../target/bench/unstable \
   cargo build --release --quiet)
bin=target/bench/unstable/release/stallscope-bench
out=$(mktemp)
trap 'rm -f "$out"' EXIT
line=$(valgrind --tool=callgrind --callgrind-out-file="$out" \
  --toggle-collect='*instrument_runtime*' \
  "$bin" production yield --quick --current-thread 2>/dev/null)
polls=$(echo "$line" | sed -n 's/.* units=\([0-9]*\).*/\1/p')
instructions=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$out")
[ -n "$polls" ] && [ -n "$instructions" ] || { echo "could not read the callgrind run: $line"; exit 1; }
python3 - "$instructions" "$polls" "$recorded" "$tolerance" <<'PY'
import sys
instructions, polls, recorded, tolerance = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
per_poll = instructions / polls
limit = recorded * tolerance
print(f"production-mode hooks: {instructions} instructions / {polls} polls = {per_poll:.1f} per poll "
      f"(recorded {recorded:.1f}, limit {limit:.1f})")
if per_poll > limit:
    print("the per-poll hot path got clearly more expensive: find the new work in "
          "`callgrind_annotate` output, or re-record bench/hot-path-instructions-per-poll if intended")
    sys.exit(1)
PY
