#!/usr/bin/env bash
# A real Kafka-protocol broker (tansu 0.6.0, sqlite storage) on 127.0.0.1 for the
# integration tests and the demo.
#
#   scripts/kafka.sh install        build tansu once into ~/.cache/spanflow (about 18 min
#                                   cold on 2 cores; later runs reuse the binary)
#   scripts/kafka.sh start [PORT]   start it in a temp dir, wait until it accepts
#                                   connections; prints `export` lines (brokers, pid, dir)
#   scripts/kafka.sh stop DIR       stop the broker started in DIR (by its PID) and
#                                   remove DIR
#
# Only the process this script started is ever stopped, by the PID it recorded.
# SPANFLOW_KAFKA_STORAGE=memory starts it with in-memory storage instead of sqlite: much
# cheaper per byte, but it is known to lose messages on a group resume, has no offsets
# by time and reports high watermarks short of the last offset (a bounded `end: latest`
# run stops early), so only benchmarks use it. Records with headers made tansu 0.6
# CPU-bound in the tests (sqlite; heartbeats and commits timed out): spanflow sends none.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

VERSION=0.6.0
CACHE="${SPANFLOW_CACHE:-$HOME/.cache/spanflow}"
ROOT="$CACHE/tansu-$VERSION"
BIN="$ROOT/bin/tansu"

install() {
  if [[ -x "$BIN" ]]; then
    return 0
  fi
  echo "building tansu $VERSION into $ROOT (once; about 18 minutes on 2 cores)" >&2
  mkdir -p "$CACHE"
  cargo install tansu --version "$VERSION" --locked --features dynostore,libsql \
    --root "$ROOT" >&2
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  install
  local port="${1:-}"
  if [[ -z "$port" ]]; then
    # A free port: let the kernel pick one.
    port=$(free_port)
  fi
  if port_open "$port"; then
    echo "port $port on 127.0.0.1 is already in use" >&2
    return 1
  fi
  local dir storage="sqlite://tansu.db"
  if [[ "${SPANFLOW_KAFKA_STORAGE:-sqlite}" == memory ]]; then
    storage="memory://tansu/"
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/spanflow-kafka.XXXXXX")
  (
    cd "$dir"
    exec "$BIN" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "$storage" \
      >"$dir/broker.log" 2>&1
  ) &
  local pid=$!
  echo "$pid" >"$dir/pid"
  for _ in $(seq 1 200); do
    if port_open "$port"; then
      echo "export SPANFLOW_KAFKA_BROKERS=127.0.0.1:$port"
      echo "export SPANFLOW_KAFKA_PID=$pid"
      echo "export SPANFLOW_KAFKA_DIR=$dir"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "tansu exited during start; its log:" >&2
      cat "$dir/broker.log" >&2
      return 1
    fi
    sleep 0.05
  done
  echo "tansu did not open port $port within 10 s; its log:" >&2
  cat "$dir/broker.log" >&2
  kill "$pid" 2>/dev/null || true
  return 1
}

stop() {
  stop_started_in "$1" spanflow-kafka
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop "${2:?usage: scripts/kafka.sh stop DIR}" ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
