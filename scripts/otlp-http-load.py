"""Sends the spans of a `spanflow gen --out FILE` file to an OTLP/HTTP receiver, as
fast as it answers, in requests of SPANS_PER_REQUEST spans (protobuf, one keep-alive
connection per sender thread). A 503 or 429 is retried after a tenth of its
Retry-After: a load generator keeps the receiver busy, where an exporter would back
off for longer.

    python otlp-http-load.py FILE URL [SPANS_PER_REQUEST] [THREADS]
    (python: `scripts/otel-python.sh python`, for the OTLP protobuf messages)

Prints one JSON line: requests and spans sent, retries, seconds.
"""

import http.client
import json
import struct
import sys
import threading
import time
import urllib.parse

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at + 4 <= len(data):
        (n,) = struct.unpack(">I", data[at : at + 4])
        yield data[at + 4 : at + 4 + n]
        at += 4 + n


def requests(path, per_request):
    """Re-packs the file's requests into ones of `per_request` spans (each span keeps
    its resource and scope)."""
    out, req, count = [], ExportTraceServiceRequest(), 0
    for raw in records(path):
        r = ExportTraceServiceRequest()
        try:
            r.ParseFromString(raw)
        except Exception:
            continue  # the generator's garbage records
        for rs in r.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    target = ResourceSpans(resource=rs.resource, schema_url=rs.schema_url)
                    scope = ScopeSpans(scope=ss.scope, schema_url=ss.schema_url)
                    scope.spans.append(span)
                    target.scope_spans.append(scope)
                    req.resource_spans.append(target)
                    count += 1
                    if count == per_request:
                        out.append(req.SerializeToString())
                        req, count = ExportTraceServiceRequest(), 0
    if count:
        out.append(req.SerializeToString())
    return out


def main():
    path, url = sys.argv[1], sys.argv[2]
    per_request = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    bodies = requests(path, per_request)
    u = urllib.parse.urlparse(url)
    stats = {"requests": 0, "retries": 0}
    lock = threading.Lock()

    def send(mine):
        conn = http.client.HTTPConnection(u.hostname, u.port)
        retries = 0
        for body in mine:
            while True:
                conn.request(
                    "POST",
                    "/v1/traces",
                    body=body,
                    headers={"Content-Type": "application/x-protobuf"},
                )
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    break
                if r.status not in (429, 503):
                    raise SystemExit(f"status {r.status}")
                retries += 1
                time.sleep(float(r.getheader("Retry-After", "1")) / 10)
        with lock:
            stats["requests"] += len(mine)
            stats["retries"] += retries

    started = time.monotonic()
    workers = [
        threading.Thread(target=send, args=(bodies[i::threads],)) for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stats["seconds"] = round(time.monotonic() - started, 3)
    stats["spans_per_request"] = per_request
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
