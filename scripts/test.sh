#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, golden and CLI tests.
# Installs what it needs: cargo-nextest, a real Kafka-protocol broker (tansu, built
# once into ~/.cache/spanflow), Debian's clickhouse-server and chdb-core (a current
# ClickHouse engine, pip-installed into ~/.cache/spanflow) and the OpenTelemetry Python
# SDK (a cached venv); the Kafka and ClickHouse tests start their own servers on
# 127.0.0.1 and stop them by PID.
# Usage: scripts/test.sh            (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest (cached in ~/.cargo/bin)"
  cargo install cargo-nextest --locked
fi

step "Kafka broker for the integration tests (cached build)"
bash scripts/kafka.sh install

step "ClickHouse server for the integration tests (Debian's clickhouse-server)"
bash scripts/clickhouse.sh install
step "a current ClickHouse engine for the DDL check (chdb-core in a cached venv)"
bash scripts/clickhouse.sh install-current

step "Prometheus and its Python client for the job server's tests (Debian's prometheus)"
bash scripts/prometheus.sh install
step "Alertmanager for the alerts sink's test (Debian's prometheus-alertmanager)"
bash scripts/alertmanager.sh install
step "headless Chromium for the web page's test (Debian's chromium)"
bash scripts/chromium.sh install
step "the OpenTelemetry Python SDK and its OTLP exporters for the receiver's test (cached venv)"
bash scripts/otel-python.sh install

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (unit, property, golden, CLI)"
cargo nextest run --workspace --locked --no-fail-fast

step "doc tests"
cargo test --workspace --locked --doc

echo
echo "all tests passed"
