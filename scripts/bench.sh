#!/usr/bin/env bash
# The overhead benchmark suite: every workload under every configuration, in fresh processes,
# alternating configurations round by round so the machine's drift hits all of them alike.
# Prints median wall time, the ratio to bare tokio measured in the same run, the same for the
# fastest run (interference only ever slows a run, and on a small VM some workloads fall into
# two speed clusters from run to run, which can put two medians in different ones), throughput
# (polls, tasks, messages, locks or requests a second, by median) and peak RSS.
#
#   scripts/bench.sh            # full sizes, 5 rounds (~10 minutes on 2 cores)
#   ROUNDS=3 scripts/bench.sh --quick
#   CONFIGS="unstable production production-10ms" WORKLOADS=mutex scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
size_flag=${1:-}
workloads=${WORKLOADS:-"yield spawn pingpong mutex http"}
out=target/bench/results.txt
mkdir -p target/bench

build() { # variant rustflags features
  local variant=$1 flags=$2 features=$3
  echo "building $variant" >&2
  (cd bench && RUSTFLAGS="$flags" CARGO_TARGET_DIR="../target/bench/$variant" \
     cargo build --release --quiet $features)
}
build bare "" ""
build unstable "--cfg tokio_unstable" ""
build tracing "--cfg tokio_unstable" "--features tracing"

bin() { echo "target/bench/$1/release/stallscope-bench"; }
all_configs="bare:bare unstable:unstable unstable:empty-hooks unstable:production unstable:production-10ms unstable:tokio-metrics tracing:idle-subscriber tracing:empty-layer tracing:full tracing:console"
# CONFIGS="unstable production production-10ms" picks configurations (bare is always run: the
# ratios are to it).
configs=$all_configs
if [ -n "${CONFIGS:-}" ]; then
  configs=""
  for pair in $all_configs; do
    case " bare $CONFIGS " in *" ${pair#*:} "*) configs="$configs $pair" ;; esac
  done
fi

: > "$out"
for workload in $workloads; do
  for round in $(seq 1 "$rounds"); do
    # Rotate the order each round.
    read -r -a all <<< "$configs"
    n=${#all[@]} k=$(( (round - 1) % ${#all[@]} ))
    ordered=("${all[@]:k}" "${all[@]:0:k}")
    for pair in "${ordered[@]}"; do
      variant=${pair%%:*} config=${pair#*:}
      "$(bin "$variant")" "$config" "$workload" $size_flag >> "$out"
    done
  done
  echo "done: $workload" >&2
done

python3 - "$out" <<'PY'
import sys, statistics, collections
runs = collections.defaultdict(list)
rss = collections.defaultdict(list)
units = {}
unit_names = {"yield": "polls", "yield-many": "polls", "spawn": "tasks", "pingpong": "messages",
              "mutex": "locks", "http": "requests"}
def rate(n, ms):
    per_s = n / (ms / 1e3)
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if per_s >= scale:
            return f"{per_s / scale:.2f}{suffix}"
    return f"{per_s:.0f}"
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split())
    key = (f["workload"], f["config"])
    runs[key].append(float(f["elapsed_ms"]))
    rss[key].append(int(f["peak_rss_kb"]))
    units[f["workload"]] = int(f["units"])
configs = ["bare", "unstable", "empty-hooks", "production", "production-10ms", "tokio-metrics", "idle-subscriber", "empty-layer", "full", "console"]
workloads = []
for w, _ in runs:
    if w not in workloads:
        workloads.append(w)
print(f"{'workload':<10} {'config':<16} {'median ms':>10} {'x bare':>7} {'fastest ms':>11} {'x bare':>7} "
      f"{'throughput (median)':>26} {'peak RSS MB':>12}  notes (ratios of medians)")
for w in workloads:
    bare = statistics.median(runs[(w, "bare")])
    bare_fastest = min(runs[(w, "bare")])
    for c in configs:
        if (w, c) not in runs:
            continue
        m = statistics.median(runs[(w, c)])
        def vs(base, what):
            if (w, base) not in runs:
                return ""
            return f"x{m / statistics.median(runs[(w, base)]):.2f} vs {base} ({what})"
        notes = {
            "empty-hooks": [vs("unstable", "tokio calling two hooks that do nothing")],
            "production": [vs("unstable", "same build, no hooks"),
                           vs("empty-hooks", "stallscope's own cost")],
            "production-10ms": [vs("unstable", "same build, no hooks"),
                                vs("production", "a 10 ms clock tick instead of 0.5 ms")],
            "empty-layer": [vs("idle-subscriber", "composing any layer")],
            "full": [vs("idle-subscriber", "target 1.15"),
                     vs("empty-layer", "stallscope's own work")],
        }
        note = ", ".join(n for n in notes.get(c, []) if n)
        fastest = min(runs[(w, c)])
        throughput = f"{rate(units[w], m)} {unit_names.get(w, 'units')}/s"
        print(f"{w:<10} {c:<16} {m:>10.1f} {m / bare:>7.2f} {fastest:>11.1f} {fastest / bare_fastest:>7.2f} "
              f"{throughput:>26} {max(rss[(w, c)]) / 1024:>12.1f}  {note}")
PY
