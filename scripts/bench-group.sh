#!/usr/bin/env bash
# Scale-out over a consumer group: one instance of jobs/kafka.yaml on one core against
# two instances (`spanflow run --instance`) on one core each, reading the same
# 8-partition topic from a local broker (Kafka -> analytics -> Parquet), then a second
# instance joining a running one to time the rebalance pause.
#
# Each case reads the whole topic bounded (start earliest, end latest) in a consumer
# group of its own. Throughput is the spans the instances' last runs read over the
# longest of those runs (what runs once the group has settled); the wall clock from
# launch to the last exit, group join included, is printed beside it.
#
# Usage: scripts/bench-group.sh [TRACES]      (default 160000, about 4 M spans)
#        SPANFLOW_KAFKA_STORAGE=sqlite scripts/bench-group.sh    (the tests' broker)
set -euo pipefail
cd "$(dirname "$0")/.."

TRACES="${1:-160000}"
cargo build --release --locked --quiet
BIN=$PWD/target/release/spanflow
# The sqlite-backed broker is the bottleneck long before spanflow is (BENCHMARKS.md,
# "Kafka end to end"); the in-memory one measures spanflow.
export SPANFLOW_KAFKA_STORAGE="${SPANFLOW_KAFKA_STORAGE:-memory}"

eval "$(bash scripts/kafka.sh start)"
work=$(mktemp -d)
trap 'bash scripts/kafka.sh stop "$SPANFLOW_KAFKA_DIR"; rm -rf "$work"' EXIT

echo "==> producing $TRACES traces to $SPANFLOW_KAFKA_BROKERS/otlp_spans (8 partitions)"
"$BIN" gen --kafka "$SPANFLOW_KAFKA_BROKERS/otlp_spans" --partitions 8 --traces "$TRACES" >/dev/null

# jobs/kafka.yaml bounded, in consumer group $1, Parquet only, without the endpoint rate
# limit (its state is per instance: README "Running a group of instances").
job() {
  sed -e "s/127.0.0.1:9092/$SPANFLOW_KAFKA_BROKERS/" \
    -e "s/group_id: spanflow-kafka/group_id: $1/" \
    -e 's/^    start: committed.*/    start: earliest\n    end: latest/' \
    -e '/endpoint_rate_limit/d' \
    -e '/^  bus:/,$d' \
    jobs/kafka.yaml >"$work/$1.yaml"
}

# Instance NAME of group GROUP pinned to core CORE; its --json summary goes to
# $work/GROUP-NAME.json.
instance() {
  local group=$1 name=$2 core=$3
  taskset -c "$core" "$BIN" run "$work/$group.yaml" --instance "$name" \
    --checkpoint-dir "$work/$group-chk" --output-dir "$work/$group-out" \
    --parallelism 1 --no-progress --json >"$work/$group-$name.json"
}

report() {
  python3 - "$work" "$@" <<'EOF'
import json, sys
work, group = sys.argv[1], sys.argv[2]
wall = float(sys.argv[4]) - float(sys.argv[3])
names = sys.argv[5:]
runs = [json.load(open(f"{work}/{group}-{n}.json")) for n in names]
spans = sum(r["decode"]["spans"] for r in runs)
longest = max(r["wall_seconds"] for r in runs)
cpu = sum(r["cpu_seconds"] for r in runs)
for n, r in zip(names, runs):
    g = r["group"]
    print(f"  {n}: {r['decode']['spans']:>9} spans in {r['wall_seconds']:6.2f} s, "
          f"{len(g['partitions'])} partitions, {g['rebalances']} rebalance(s), "
          f"paused {g['paused_seconds']:.2f} s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
print(f"  {group}: {spans / longest / 1e3:.0f} K spans/s settled "
      f"({spans} spans / {longest:.2f} s), {spans / cpu / 1e3:.0f} K spans per CPU-s, "
      f"{wall:.2f} s launch to exit")
print(f"RESULT {group} {spans / longest:.0f}")
EOF
}

now() { date +%s.%N; }

echo "==> one instance on core 0"
job one
t0=$(now)
instance one solo 0
t1=$(now)
report one "$t0" "$t1" solo | tee "$work/one.txt"

echo "==> two instances, on cores 0 and 1"
job two
t0=$(now)
instance two a 0 &
pa=$!
instance two b 1 &
pb=$!
wait "$pa" "$pb"
t1=$(now)
report two "$t0" "$t1" a b | tee "$work/two.txt"

one=$(awk '/^RESULT/ {print $3}' "$work/one.txt")
two=$(awk '/^RESULT/ {print $3}' "$work/two.txt")
echo "==> two instances / one: $(python3 -c "print(f'{$two / $one:.2f}')")x"

# Only the pauses count here: the member that finishes its partitions first leaves the
# group, and the other restarts on all of them (README "Running a group of instances":
# bounded runs of several members).
echo "==> a second instance joins a running one 3 s after it started (rebalance pause)"
job join
instance join a 0 &
pa=$!
sleep 3
instance join b 1 &
pb=$!
wait "$pa" "$pb"
python3 - "$work" <<'EOF'
import json, sys
for n in ("a", "b"):
    g = json.load(open(f"{sys.argv[1]}/join-{n}.json"))["group"]
    print(f"  {n}: {g['rebalances']} rebalance(s), paused {g['paused_seconds']:.2f} s in all")
EOF
