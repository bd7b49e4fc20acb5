#!/usr/bin/env bash
# End-to-end Kafka throughput: start a local broker, produce generated spans to a
# 4-partition topic, then run jobs/kafka.yaml bounded (start: earliest, end: latest,
# Parquet outputs only) and print the run's summary (spans/s, spans per CPU-second).
#
# Usage: scripts/bench-kafka.sh [TRACES]      (default 80000, about 2 M spans)
#        SPANFLOW_KAFKA_STORAGE=memory scripts/bench-kafka.sh    (broker without sqlite)
set -euo pipefail
cd "$(dirname "$0")/.."

TRACES="${1:-80000}"
cargo build --release --locked --quiet
BIN=target/release/spanflow

eval "$(bash scripts/kafka.sh start)"
trap 'bash scripts/kafka.sh stop "$SPANFLOW_KAFKA_DIR"' EXIT

echo "==> producing $TRACES traces to $SPANFLOW_KAFKA_BROKERS/otlp_spans"
"$BIN" gen --kafka "$SPANFLOW_KAFKA_BROKERS/otlp_spans" --partitions 4 --traces "$TRACES" >/dev/null

work=$(mktemp -d)
# The demo's Kafka job, bounded, writing Parquet only.
sed -e "s/127.0.0.1:9092/$SPANFLOW_KAFKA_BROKERS/" \
  -e 's/^    start: committed.*/    start: earliest\n    end: latest/' \
  -e '/^  bus:/,$d' \
  jobs/kafka.yaml >"$work/job.yaml"

echo "==> running the job (Kafka -> sessions -> sampling -> metrics -> Parquet)"
"$BIN" run "$work/job.yaml" --output-dir "$work/out" --no-progress
rm -rf "$work"
