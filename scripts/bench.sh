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
#   CONFIGS="unstable production production-coarse" WORKLOADS=mutex scripts/bench.sh
#   WORKLOADS=service scripts/bench.sh   # the saturated service alone (~13 minutes)
#
# The `service` workload (bench/src/service.rs) is a Redis-protocol server saturated by its
# client, both on CPU 1: it runs SERVICE_ROUNDS rounds (50) of SERVICE_SECONDS (1) each (after a
# second's warm-up; one run differs from the next by 6-8% however long it runs, so many short
# rounds narrow the intervals most: about +-2% after 50), and
# prints each configuration's cost against its baseline measured in the same rounds, with a
# 95% confidence interval over the rounds, context switches per request, and the wakeups a
# second of each of stallscope's threads.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
size_flag=${1:-}
workloads=${WORKLOADS:-"yield spawn pingpong mutex http service"}
service_rounds=${SERVICE_ROUNDS:-50}
service_seconds=${SERVICE_SECONDS:-1}
command -v taskset >/dev/null || { echo "bench.sh: the service workload needs taskset (util-linux)" >&2; exit 1; }
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
all_configs="bare:bare unstable:unstable unstable:empty-hooks unstable:production unstable:production-coarse unstable:tokio-metrics tracing:idle-subscriber tracing:empty-layer tracing:full tracing:full-coarse tracing:console"
# CONFIGS="unstable production production-coarse" picks configurations (bare is always run: the
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
  workload_rounds=$rounds
  [ "$workload" = service ] && workload_rounds=$service_rounds
  for round in $(seq 1 "$workload_rounds"); do
    # Rotate the order each round.
    read -r -a all <<< "$configs"
    n=${#all[@]} k=$(( (round - 1) % ${#all[@]} ))
    ordered=("${all[@]:k}" "${all[@]:0:k}")
    for pair in "${ordered[@]}"; do
      variant=${pair%%:*} config=${pair#*:}
      if [ "$workload" = service ]; then
        echo -n "round=$round " >> "$out"
        taskset -c 1 "$(bin "$variant")" "$config" service --client "$(bin bare)" \
          --seconds "$service_seconds" >> "$out"
      else
        "$(bin "$variant")" "$config" "$workload" $size_flag >> "$out"
      fi
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
configs = ["bare", "unstable", "empty-hooks", "production", "production-coarse", "tokio-metrics", "idle-subscriber", "empty-layer", "full", "full-coarse", "console"]
workloads = []
for w, _ in runs:
    if w not in workloads and w != "service":
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
            "production-coarse": [vs("unstable", "same build, no hooks"),
                                vs("production", "the coarse clock instead of the CPU's counter")],
            "empty-layer": [vs("idle-subscriber", "composing any layer")],
            "full": [vs("idle-subscriber", "target 1.15"),
                     vs("empty-layer", "stallscope's own work")],
        }
        note = ", ".join(n for n in notes.get(c, []) if n)
        fastest = min(runs[(w, c)])
        throughput = f"{rate(units[w], m)} {unit_names.get(w, 'units')}/s"
        print(f"{w:<10} {c:<16} {m:>10.1f} {m / bare:>7.2f} {fastest:>11.1f} {fastest / bare_fastest:>7.2f} "
              f"{throughput:>26} {max(rss[(w, c)]) / 1024:>12.1f}  {note}")

def service_table(path):
    import math
    rounds = collections.defaultdict(dict)
    for line in open(path):
        f = dict(kv.split("=", 1) for kv in line.split())
        if f.get("workload") != "service":
            continue
        rounds[int(f["round"])][f["config"]] = f
    if not rounds:
        return
    # Two-sided 95% Student t quantiles by degrees of freedom.
    t95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
           10: 2.23, 11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 19: 2.09, 24: 2.06, 29: 2.05}
    def t(df):
        return t95.get(df) or t95[max(k for k in t95 if k <= df)] if df >= 1 else float("nan")
    baseline = {"unstable": "bare", "empty-hooks": "unstable", "production": "unstable",
                "production-coarse": "unstable", "tokio-metrics": "unstable",
                "idle-subscriber": "unstable", "empty-layer": "unstable", "full": "empty-layer",
                "full-coarse": "empty-layer", "console": "empty-layer"}
    def rate(f):
        return int(f["units"]) / (float(f["elapsed_ms"]) / 1e3)
    print()
    print(f"service: a Redis-protocol server and its client sharing CPU 1, {len(rounds)} rounds; "
          "cost = baseline's requests/s / this one's, per round; 95% interval over the rounds")
    print(f"{'config':<16} {'requests/s':>11} {'vs':<12} {'cost':>6} {'95% interval':>15} "
          f"{'switches/request':>17} {'CPU us/request':>15}  stallscope threads' switches/s")
    for c in configs:
        here = [r[c] for r in rounds.values() if c in r]
        if not here:
            continue
        rates = [rate(f) for f in here]
        base = baseline.get(c)
        cost, interval = "", ""
        if base:
            logs = [math.log(rate(r[base]) / rate(r[c])) for r in rounds.values() if c in r and base in r]
            if len(logs) >= 2:
                mean = statistics.mean(logs)
                half = t(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
                cost = f"{math.exp(mean):.3f}"
                interval = f"{math.exp(mean - half):.3f}-{math.exp(mean + half):.3f}"
        switches, threads = [], collections.defaultdict(list)
        for f in here:
            per_thread = dict(kv.rsplit(":", 1) for kv in f["switches"].split(",") if ":" in kv)
            switches.append(sum(int(v) for v in per_thread.values()) / int(f["units"]))
            for name, v in per_thread.items():
                if name.startswith("stallscope-") and name != "stallscope-benc":
                    threads[name].append(int(v) / (float(f["elapsed_ms"]) / 1e3))
        cpu = statistics.median(int(f["cpu_ms"]) * 1e3 / int(f["units"]) for f in here)
        stallscope = ", ".join(f"{n} {statistics.median(v):.0f}" for n, v in sorted(threads.items()))
        print(f"{c:<16} {statistics.median(rates):>11.0f} {base or '':<12} {cost:>6} {interval:>15} "
              f"{statistics.median(switches):>17.3f} {cpu:>15.2f}  {stallscope}")
service_table(sys.argv[1])
PY
