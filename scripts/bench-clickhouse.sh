#!/usr/bin/env bash
# ClickHouse sink throughput: start a local clickhouse-server (Debian's 18.16), run the
# `clickhouse` criterion bench (RowBinary encoding, and rows/s of `spans` and
# `red_metrics` through the whole sink into the server), then the end-to-end
# jobs/clickhouse.yaml (generator -> analytics -> every table into ClickHouse).
#
# Usage: scripts/bench-clickhouse.sh
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash scripts/clickhouse.sh start)"
trap 'bash scripts/clickhouse.sh stop "$SPANFLOW_CLICKHOUSE_DIR"' EXIT
export SPANFLOW_CLICKHOUSE_URL

echo "==> cargo bench --bench clickhouse (server $SPANFLOW_CLICKHOUSE_URL)"
cargo bench --locked --bench clickhouse

echo "==> jobs/clickhouse.yaml end to end"
cargo build --release --locked --quiet
work=$(mktemp -d)
target/release/spanflow run jobs/clickhouse.yaml --output-dir "$work" --no-progress
rm -rf "$work"
