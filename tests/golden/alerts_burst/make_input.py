"""Writes input.jsonl for the alerts_burst golden case (deterministic; rerun to change it).

Service `shop` serves `POST /checkout` and `GET /` twice a second each for 150 s from
2026-01-01T00:00:00Z, each request with a database call. Checkout requests fail (HTTP 500)
one in two from 40 s to 80 s; database calls take 500 ms instead of 20 ms from 100 s to
130 s. Everything else succeeds quickly.
"""

import json

T0 = 1767225600 * 10**9
MS = 10**6
lines = []
n = 0
for tick in range(300):  # every 0.5 s
    for op in ["POST /checkout", "GET /"]:
        n += 1
        start = T0 + tick * 500 * MS
        t = start // 10**9 - T0 // 10**9
        failed = op == "POST /checkout" and 40 <= t < 80 and n % 4 == 1
        db_ms = 500 if 100 <= t < 130 else 20
        trace = f"{n:032x}"
        root = f"{n:012x}0001"
        db = f"{n:012x}0002"
        status = 500 if failed else 200
        server = {
            "traceId": trace, "spanId": root, "name": op, "kind": 2,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(start + (db_ms + 10) * MS),
            "attributes": [
                {"key": "http.request.method", "value": {"stringValue": op.split()[0]}},
                {"key": "http.response.status_code", "value": {"intValue": str(status)}},
            ],
        }
        if failed:
            server["status"] = {"code": 2, "message": "checkout failed"}
        client = {
            "traceId": trace, "spanId": db, "parentSpanId": root, "name": "SELECT orders",
            "kind": 3,
            "startTimeUnixNano": str(start + 5 * MS),
            "endTimeUnixNano": str(start + (5 + db_ms) * MS),
            "attributes": [
                {"key": "db.system.name", "value": {"stringValue": "postgresql"}},
                {"key": "db.namespace", "value": {"stringValue": "orders"}},
            ],
        }
        lines.append({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "shop"}},
                {"key": "service.instance.id", "value": {"stringValue": "shop-1"}},
            ]},
            "scopeSpans": [{"scope": {"name": "golden"}, "spans": [server, client]}],
        }]})
with open("input.jsonl", "w") as f:
    for line in lines:
        f.write(json.dumps(line, separators=(",", ":")) + "\n")
