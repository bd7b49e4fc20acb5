#!/usr/bin/env bash
# End-to-end replay (backfill) throughput: start a local broker, produce generated spans
# to a 4-partition topic, then `spanflow replay` jobs/kafka.yaml (Parquet outputs only)
# over the time range of the produce, and print the replay's summary (spans/s, spans per
# CPU-second, peak RSS).
#
# Usage: scripts/bench-replay.sh [TRACES]     (default 200000, about 5.2 M spans)
set -euo pipefail
cd "$(dirname "$0")/.."

TRACES="${1:-200000}"
cargo build --release --locked --quiet
BIN=target/release/spanflow

eval "$(bash scripts/kafka.sh start)"
work=$(mktemp -d)
trap 'bash scripts/kafka.sh stop "$SPANFLOW_KAFKA_DIR"; rm -rf "$work"' EXIT

from=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
echo "==> producing $TRACES traces to $SPANFLOW_KAFKA_BROKERS/otlp_spans"
start=$(date +%s.%N)
"$BIN" gen --kafka "$SPANFLOW_KAFKA_BROKERS/otlp_spans" --partitions 4 --traces "$TRACES" >"$work/truth.json"
echo "    took $(echo "$(date +%s.%N) - $start" | bc) s"
sleep 1
to=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)

# The demo's Kafka job writing Parquet only (its Kafka sink removed).
sed -e "s/127.0.0.1:9092/$SPANFLOW_KAFKA_BROKERS/" -e '/^  bus:/,$d' \
  jobs/kafka.yaml >"$work/job.yaml"

echo "==> replaying $from .. $to (Kafka -> sessions -> sampling -> metrics -> Parquet)"
"$BIN" replay "$work/job.yaml" --from "$from" --to "$to" --output-dir "$work/out" \
  --checkpoint-dir "$work/checkpoints" --no-progress
