#!/usr/bin/env bash
# What the repartition stage costs: one instance of jobs/kafka.yaml on one core reading
# a topic partitioned by trace id, against one instance with a repartition stage reading
# the same traces from a topic that is not (each request whole, partitions in turn).
#
# The keyed case reads bounded (end: latest). The repartitioned one cannot (its stage
# runs on an unbounded source): it is stopped with SIGINT once it has used less than 4% of
# a core for 3 s in a row (everything split and analysed; an idle run still polls and
# heartbeats), and the start of that quiet spell is its wall time.
#
# Usage: scripts/bench-repartition.sh [TRACES]      (default 80000, about 2 M spans)
set -euo pipefail
cd "$(dirname "$0")/.."

TRACES="${1:-80000}"
cargo build --release --locked --quiet
BIN=$PWD/target/release/spanflow
export SPANFLOW_KAFKA_STORAGE="${SPANFLOW_KAFKA_STORAGE:-memory}"

eval "$(bash scripts/kafka.sh start)"
work=$(mktemp -d)
trap 'bash scripts/kafka.sh stop "$SPANFLOW_KAFKA_DIR"; rm -rf "$work"' EXIT

echo "==> producing $TRACES traces twice: keyed (by trace id) and unkeyed, 8 partitions each"
"$BIN" gen --kafka "$SPANFLOW_KAFKA_BROKERS/keyed" --partitions 8 --traces "$TRACES" >/dev/null
"$BIN" gen --kafka "$SPANFLOW_KAFKA_BROKERS/unkeyed" --partitions 8 --traces "$TRACES" \
  --unkeyed >/dev/null

# jobs/kafka.yaml on topic $1 in group $1, Parquet only, without the endpoint rate
# limit (README "Running a group of instances"); $2 replaces the start line.
job() {
  sed -e "s/127.0.0.1:9092/$SPANFLOW_KAFKA_BROKERS/" \
    -e "s/topics: \[otlp_spans\]/topics: [$1]/" \
    -e "s/group_id: spanflow-kafka/group_id: $1/" \
    -e "s/^    start: committed.*/$2/" \
    -e '/endpoint_rate_limit/d' \
    -e '/^  bus:/,$d' \
    jobs/kafka.yaml >"$work/$1.yaml"
}
job keyed '    start: earliest\n    end: latest'
job unkeyed '    start: earliest\n    repartition: { partitions: 8 }'

# `exec`, so that `run ... &` leaves spanflow's own PID in `$!` (the CPU watch below).
run() {
  exec taskset -c 0 "$BIN" run "$work/$1.yaml" --instance solo \
    --checkpoint-dir "$work/$1-chk" --output-dir "$work/$1-out" \
    --parallelism 1 --no-progress --json
}

# The broker's CPU seconds so far (it is not pinned: it takes the other core).
broker_cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$SPANFLOW_KAFKA_PID/stat"; }

echo "==> keyed topic, one instance on core 0"
b0=$(broker_cpu)
t0=$(date +%s.%N)
(run keyed >"$work/keyed.json")
t1=$(date +%s.%N)
b1=$(broker_cpu)

echo "==> unkeyed topic with a repartition stage, one instance on core 0"
t2=$(date +%s.%N)
b2=$(broker_cpu)
run unkeyed >"$work/unkeyed.json" &
pid=$!
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0; }
last=-1
still=0
done_at=$t2
while kill -0 "$pid" 2>/dev/null; do
  sleep 0.5
  now=$(cpu)
  # /proc/PID/stat counts clock ticks (100 per second), sampled every 0.5 s.
  if [ "$last" -ge 0 ] && [ $((now - last)) -lt 2 ]; then
    still=$((still + 1))
  else
    still=0
    done_at=$(date +%s.%N)
  fi
  last=$now
  if [ "$still" -ge 6 ]; then
    kill -INT "$pid"
    break
  fi
done
wait "$pid"
b3=$(broker_cpu)

python3 - "$work" "$t0" "$t1" "$t2" "$done_at" "$b0" "$b1" "$b2" "$b3" <<'EOF'
import json, sys
work, t0, t1, t2, done, b0, b1, b2, b3 = sys.argv[1], *map(float, sys.argv[2:])
k = json.load(open(f"{work}/keyed.json"))
u = json.load(open(f"{work}/unkeyed.json"))
r = u["group"]["repartition"]
for name, s, wall, broker in (("keyed", k, t1 - t0, b1 - b0),
                              ("repartitioned", u, done - t2, b3 - b2)):
    spans = s["decode"]["spans"]
    rows = {o["table"]: o["rows"] for o in s["outputs"]}
    print(f"  {name:>13}: {spans} spans in {wall:6.2f} s = {spans / wall / 1e3:5.0f} K spans/s, "
          f"{s['cpu_seconds']:6.2f} CPU-s = {spans / s['cpu_seconds'] / 1e3:5.0f} K spans per CPU-s, "
          f"peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB, {s['peak_buffered_spans']} buffered spans at peak; "
          f"{rows.get('traces')} traces, "
          f"{rows.get('spans')} kept spans, {s['group']['rebalances']} rebalance(s); "
          f"broker {broker:.2f} CPU-s")
print(f"  stage: {r['records']} records ({r['bytes_in'] / 2**20:.1f} MiB) split into "
      f"{r['messages']} messages ({r['bytes_out'] / 2**20:.1f} MiB) on {r['partitions']} partitions")
print(f"  CPU per span: keyed {k['cpu_seconds'] / k['decode']['spans'] * 1e9:.0f} ns, "
      f"repartitioned {u['cpu_seconds'] / u['decode']['spans'] * 1e9:.0f} ns")
EOF
