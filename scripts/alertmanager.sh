#!/usr/bin/env bash
# Alertmanager for the alerts sink's compatibility test: Debian's
# `prometheus-alertmanager` package (0.25). The test starts it itself on loopback, with a
# config and storage of its own, and stops it by PID; apt's post-install cannot start the
# service without systemd, so nothing is left running.
#
#   scripts/alertmanager.sh install   apt-get install prometheus-alertmanager, when missing
set -euo pipefail

install() {
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  if command -v prometheus-alertmanager >/dev/null 2>&1; then
    return 0
  fi
  echo "installing Debian's prometheus-alertmanager" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y prometheus-alertmanager >&2 ||
    { $sudo apt-get update >&2 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y prometheus-alertmanager >&2; }
}

case "${1:-}" in
  install) install ;;
  *)
    echo "usage: $0 install" >&2
    exit 2
    ;;
esac
