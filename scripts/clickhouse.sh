#!/usr/bin/env bash
# A real ClickHouse server (Debian's clickhouse-server package) on 127.0.0.1 for the
# integration tests and the demo, as a plain background process (no systemd) with its
# config and data in a temp dir.
#
#   scripts/clickhouse.sh install       apt-get install clickhouse-server when missing
#   scripts/clickhouse.sh install-current   a current engine (chdb-core 26.9, cached venv)
#   scripts/clickhouse.sh current-python    installs it when missing; prints its python
#   scripts/clickhouse.sh start         start it on free ports, wait for /ping; prints
#                                       `export` lines (HTTP URL, pid, dir)
#   scripts/clickhouse.sh stop DIR      stop the server started in DIR (by its PID) and
#                                       remove DIR
#   scripts/clickhouse.sh restart DIR S kill that server, keep it down S seconds, start
#                                       it again on the same port and data (outage tests)
#
# Only the process this script started is ever stopped, by the PID it recorded.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

BIN=/usr/sbin/clickhouse-server

install() {
  if [[ -x "$BIN" ]]; then
    return 0
  fi
  echo "installing Debian's clickhouse-server" >&2
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    sudo="sudo"
  fi
  # apt's service start fails harmlessly without systemd; the server is started below.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y clickhouse-server clickhouse-client >&2 ||
    { $sudo apt-get update >&2 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y clickhouse-server clickhouse-client >&2; }
}

# A current ClickHouse engine for checking the current-release DDL and encoding: the
# chdb-core wheel (ClickHouse 26.9 in-process) in a venv cached under ~/.cache/spanflow.
CHDB_VENV="${SPANFLOW_CACHE:-$HOME/.cache/spanflow}/chdb-26.9.0"

install_current() {
  if [[ -x "$CHDB_VENV/bin/python" ]] && "$CHDB_VENV/bin/python" -c 'import chdb' 2>/dev/null; then
    return 0
  fi
  echo "installing chdb-core 26.9.0 (a current ClickHouse engine) into $CHDB_VENV" >&2
  if ! python3 -m venv "$CHDB_VENV" >&2 2>/dev/null; then
    local sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y python3-venv >&2
    python3 -m venv "$CHDB_VENV" >&2
  fi
  "$CHDB_VENV/bin/pip" install --quiet chdb-core==26.9.0 >&2
}

start() {
  install
  local dir http tcp
  dir=$(mktemp -d "${TMPDIR:-/tmp}/spanflow-clickhouse.XXXXXX")
  http=$(free_port)
  tcp=$(free_port)
  mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/format_schemas" "$dir/log"
  cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>$dir/log/server.log</log>
    <errorlog>$dir/log/error.log</errorlog>
    <console>0</console>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$http</http_port>
  <tcp_port>$tcp</tcp_port>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>536870912</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
EOF
  cat >"$dir/users.xml" <<'EOF'
<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>4000000000</max_memory_usage>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks>
        <ip>127.0.0.1</ip>
        <ip>::1</ip>
      </networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries>
        <errors>0</errors>
        <result_rows>0</result_rows>
        <read_rows>0</read_rows>
        <execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
EOF
  launch "$dir" "$http"
  echo "export SPANFLOW_CLICKHOUSE_URL=http://127.0.0.1:$http"
  echo "export SPANFLOW_CLICKHOUSE_PID=$(cat "$dir/pid")"
  echo "export SPANFLOW_CLICKHOUSE_DIR=$dir"
}

# Starts the server of DIR's config in the background and waits for /ping on port $2.
launch() {
  local dir="$1" http="$2"
  "$BIN" --config-file="$dir/config.xml" >>"$dir/log/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/pid"
  for _ in $(seq 1 200); do
    if [[ "$(curl -s "http://127.0.0.1:$http/ping" 2>/dev/null)" == "Ok." ]]; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "clickhouse-server exited during start; its logs:" >&2
      cat "$dir/log/stdout.log" "$dir/log/error.log" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.05
  done
  echo "clickhouse-server did not answer /ping within 10 s" >&2
  kill "$pid" 2>/dev/null || true
  return 1
}

stop() {
  stop_started_in "$1" spanflow-clickhouse
}

# Stops the server started in DIR (by its PID), keeps it down for SECONDS, and starts
# it again with the same config and data (an outage, for the tests).
restart() {
  local dir="$1" secs="$2" pid http
  pid=$(cat "$dir/pid")
  http=$(sed -n 's:.*<http_port>\([0-9]*\)</http_port>.*:\1:p' "$dir/config.xml")
  # A crash, not a shutdown: a graceful stop would let the inserts in flight finish.
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  sleep "$secs"
  launch "$dir" "$http"
}

case "${1:-}" in
  install) install ;;
  install-current) install_current ;;
  current-python) install_current && echo "$CHDB_VENV/bin/python" ;;
  start) start ;;
  stop) stop "${2:?usage: scripts/clickhouse.sh stop DIR}" ;;
  restart) restart "${2:?usage: scripts/clickhouse.sh restart DIR SECONDS}" "${3:-3}" ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
