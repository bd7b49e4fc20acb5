#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, golden and CLI tests.
# Installs what it needs; later steps start ClickHouse and Kafka on 127.0.0.1 here.
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
