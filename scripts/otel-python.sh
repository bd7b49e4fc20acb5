#!/usr/bin/env bash
# The OpenTelemetry Python SDK (1.45.2) and its OTLP exporters in a venv cached under
# ~/.cache/spanflow, so that tests can be fed spans made by a real SDK rather than
# only by our own encoder: tests/fixtures/otel_sdk_spans.py runs with this python and
# writes an OTLP ExportTraceServiceRequest that the SDK's own protobuf encoder made;
# tests/fixtures/otel_sdk_export.py exports with the SDK's OTLP exporters;
# tests/fixtures/jaeger_client.py builds a Jaeger API client with grpcio-tools.
#
#   scripts/otel-python.sh install   pip install the SDK and OTLP exporters, when missing
#   scripts/otel-python.sh python    installs when missing; prints the venv's python
#
# Every OpenTelemetry package is pinned to one release (their dependencies, such as
# protobuf and grpcio, are whatever pip picks for them). tests/fixtures/otel_sdk_export.py
# sends over the network, to the receiver a test started on 127.0.0.1.
set -euo pipefail

OTEL_VERSION="1.45.2"
GRPCIO_TOOLS_VERSION="1.85.1"
OTEL_SEMCONV_VERSION="0.66b2"
OTEL_VENV="${SPANFLOW_CACHE:-$HOME/.cache/spanflow}/opentelemetry-python-$OTEL_VERSION"
OTEL_IMPORTS="import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.common, \
opentelemetry.exporter.otlp.proto.grpc.trace_exporter, \
opentelemetry.exporter.otlp.proto.http.trace_exporter, grpc_tools.protoc"

install() {
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  if [[ -x "$OTEL_VENV/bin/python" ]] &&
    "$OTEL_VENV/bin/python" -c "$OTEL_IMPORTS" 2>/dev/null; then
    return 0
  fi
  echo "installing the OpenTelemetry Python SDK $OTEL_VERSION into $OTEL_VENV" >&2
  if ! python3 -m venv "$OTEL_VENV" >&2 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y python3-venv >&2
    python3 -m venv "$OTEL_VENV" >&2
  fi
  "$OTEL_VENV/bin/pip" install --quiet \
    "opentelemetry-api==$OTEL_VERSION" \
    "opentelemetry-sdk==$OTEL_VERSION" \
    "opentelemetry-proto==$OTEL_VERSION" \
    "opentelemetry-semantic-conventions==$OTEL_SEMCONV_VERSION" \
    "opentelemetry-exporter-otlp-proto-common==$OTEL_VERSION" \
    "opentelemetry-exporter-otlp-proto-grpc==$OTEL_VERSION" \
    "opentelemetry-exporter-otlp-proto-http==$OTEL_VERSION" \
    "grpcio-tools==$GRPCIO_TOOLS_VERSION" >&2
  "$OTEL_VENV/bin/python" -c "$OTEL_IMPORTS"
}

case "${1:-}" in
  install) install ;;
  python)
    install
    echo "$OTEL_VENV/bin/python"
    ;;
  *)
    echo "usage: $0 install|python" >&2
    exit 2
    ;;
esac
