#!/usr/bin/env bash
# Headless Chromium (Debian's `chromium` package) for the web page's browser test.
#
#   scripts/chromium.sh install   apt-get install chromium when missing
#   scripts/chromium.sh path      installs when missing; prints the binary
set -euo pipefail

install() {
  if command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  echo "installing Debian's chromium" >&2
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium >&2 ||
    { $sudo apt-get update >&2 &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium >&2; }
}

case "${1:-}" in
  install) install ;;
  path)
    install
    command -v chromium
    ;;
  *)
    echo "usage: $0 install|path" >&2
    exit 2
    ;;
esac
