#!/usr/bin/env bash
# Guards full mode's cost with a measure that does not drift: the instructions the layer adds
# per poll (yield: 100 tasks; yield-many: 1,000 tasks taking turns), per tokio Mutex lock
# (mutex workload) and per spawned task (spawn: 50,000 tasks), counted by callgrind as
# the application thread's instructions under `full` minus those under `empty-layer` on a
# current-thread runtime (deterministic: the same binary and input give the same count to a
# few hundred instructions in a hundred million). A difference, not a toggle on the layer's
# functions: what the compiler inlines into tracing-subscriber's dispatch is counted too.
# Fails when a figure rises clearly above bench/full-mode-instructions.
# Wall-clock ratios live in scripts/bench.sh, never in a pass/fail check.
set -euo pipefail
cd "$(dirname "$0")/.."
tolerance=${FULL_MODE_TOLERANCE:-1.15}

command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)"; exit 1; }
(cd bench && RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=../target/bench/tracing \
   cargo build --release --quiet --features tracing)
bin=target/bench/tracing/release/stallscope-bench
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# Instructions of the main thread (the runtime's only worker) and the units, for one config.
count() { # config workload
  local line
  line=$(valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$dir/$1-$2" \
    "$bin" "$1" "$2" --quick --current-thread 2>/dev/null)
  echo "$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$dir/$1-$2-01")" \
       "$(echo "$line" | sed -n 's/.* units=\([0-9]*\).*/\1/p')"
}

failed=0
while read -r workload unit recorded; do
  read -r base units < <(count empty-layer "$workload")
  read -r full full_units < <(count full "$workload")
  [ -n "$base" ] && [ -n "$full" ] && [ "$units" = "$full_units" ] \
    || { echo "could not read the callgrind runs of $workload"; exit 1; }
  python3 - "$workload" "$unit" "$base" "$full" "$units" "$recorded" "$tolerance" <<'PY' || failed=1
import sys
workload, unit = sys.argv[1], sys.argv[2]
base, full, units = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
recorded, tolerance = float(sys.argv[6]), float(sys.argv[7])
added = (full - base) / units
limit = recorded * tolerance
print(f"full mode, {workload}: {base / units:.1f} instructions per {unit} with an empty layer, "
      f"{full / units:.1f} with stallscope's: {added:.1f} added (recorded {recorded:.1f}, limit {limit:.1f})")
if added > limit:
    print(f"the layer's cost per {unit} rose clearly: find the new work in `callgrind_annotate` "
          "output, or re-record bench/full-mode-instructions if intended")
    sys.exit(1)
PY
done < <(grep -v '^#' bench/full-mode-instructions)
exit "$failed"
