#!/usr/bin/env bash
# Prometheus for the job server's compatibility tests: Debian's `prometheus` package
# (2.42), started by the tests themselves on loopback, and the official Prometheus
# Python client (its OpenMetrics parser) in a venv cached under ~/.cache/spanflow.
#
#   scripts/prometheus.sh install   apt-get install prometheus, pip install the client,
#                                   when missing
#   scripts/prometheus.sh python    installs when missing; prints the client's python
#
# apt's post-install cannot start the service without systemd, and the tests start
# Prometheus with a config of their own; nothing is left running.
set -euo pipefail

CLIENT_VENV="${SPANFLOW_CACHE:-$HOME/.cache/spanflow}/prometheus-client-0.21.1"

install() {
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  if ! command -v prometheus >/dev/null 2>&1; then
    echo "installing Debian's prometheus" >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y prometheus >&2 ||
      { $sudo apt-get update >&2 &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y prometheus >&2; }
  fi
  if [[ -x "$CLIENT_VENV/bin/python" ]] &&
    "$CLIENT_VENV/bin/python" -c 'import prometheus_client' 2>/dev/null; then
    return 0
  fi
  echo "installing prometheus_client 0.21.1 into $CLIENT_VENV" >&2
  if ! python3 -m venv "$CLIENT_VENV" >&2 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y python3-venv >&2
    python3 -m venv "$CLIENT_VENV" >&2
  fi
  "$CLIENT_VENV/bin/pip" install --quiet prometheus_client==0.21.1 >&2
}

case "${1:-}" in
  install) install ;;
  python)
    install
    echo "$CLIENT_VENV/bin/python"
    ;;
  *)
    echo "usage: $0 install|python" >&2
    exit 2
    ;;
esac
