# Shared by scripts/kafka.sh and scripts/clickhouse.sh (sourced, not run).

# A free TCP port on 127.0.0.1, picked by the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Stops the server whose PID is in DIR/pid (TERM, then KILL after 5 s) and removes DIR
# when it is one of ours (a temp dir named PREFIX.*). Only that PID is ever signalled.
stop_started_in() {
  local dir="$1" prefix="$2"
  if [[ -f "$dir/pid" ]]; then
    local pid
    pid=$(cat "$dir/pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  case "$dir" in
    "${TMPDIR:-/tmp}/$prefix".*) rm -rf "$dir" ;;
  esac
}
