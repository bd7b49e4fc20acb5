#!/usr/bin/env bash
# Throughput of the OTLP/HTTP receiver: a job whose source is `type: otlp` (the demo's
# operators, Parquet outputs) takes the spans of `spanflow gen` from
# scripts/otlp-http-load.py in requests of 100 spans. Prints the spans the job decoded,
# the load's wall time and the job process's CPU seconds (user + system, start to
# stop, its flush included), and spans per second and per CPU-second.
#
#   scripts/bench-otlp-http.sh [TRACES] [SPANS_PER_REQUEST] [SENDER_THREADS]
#   SPANFLOW_BIN=/path/to/spanflow scripts/bench-otlp-http.sh ...   (A/B: that binary)
#
# The load generator runs on the same machine and takes CPU of its own, which is not
# counted: per CPU-second is the receiver's and the pipeline's cost only.
set -euo pipefail
cd "$(dirname "$0")/.."
traces=${1:-20000} per_request=${2:-100} senders=${3:-2}
bin=${SPANFLOW_BIN:-target/release/spanflow}
[[ -n ${SPANFLOW_BIN:-} ]] || cargo build --release --locked --quiet
if [[ ! -x /usr/bin/time ]]; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y time >&2
fi
python=$(bash scripts/otel-python.sh python)
dir=$(mktemp -d)
pid=""
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
"$bin" gen --traces "$traces" --out "$dir/spans.pb" >/dev/null 2>&1
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/job.yaml" <<YAML
name: otlp-http-bench
sources:
  rx:
    type: otlp
    http: 127.0.0.1:$port
    queue: 256
    # The generated spans are from the past: the wall clock must not make them late.
    watermark: { max_out_of_order: 5s, idle_timeout: 30s, wall_clock_lag: 10y }
operators:
  sessions: { type: session_window, from: rx, gap: 10s, max_open_traces: 200000 }
  sampler:
    type: tail_sampling
    from: sessions
    policies:
      - { name: errors, type: error }
      - { name: baseline, type: probabilistic, percentage: 5 }
  metrics: { type: red_metrics, from: sampler, interval: 10s }
  graph: { type: service_graph, from: sampler, interval: 10s }
sinks:
  out:
    type: parquet
    from: [sampler, sampler.spans, metrics, metrics.exemplars, graph, rx.dead_letters]
    path: $dir/out
YAML
/usr/bin/time -f "%U %S" -o "$dir/cpu" "$bin" run "$dir/job.yaml" >"$dir/summary" 2>"$dir/log" &
pid=$!
for _ in $(seq 1 300); do
  curl -s -o /dev/null "http://127.0.0.1:$port/v1/traces" && break
  sleep 0.1
done
load=$("$python" scripts/otlp-http-load.py "$dir/spans.pb" "http://127.0.0.1:$port" "$per_request" "$senders")
# Let the job take what is queued, then stop it as Ctrl-C would (it flushes and writes).
sleep 1
kill -INT "$(pgrep -P "$pid" spanflow || echo "$pid")"
wait "$pid" || true
pid=""
python3 - "$dir/cpu" "$dir/summary" "$load" <<'PY'
import json, re, sys
user, system = map(float, open(sys.argv[1]).read().split()[-2:])
summary = open(sys.argv[2]).read()
load = json.loads(sys.argv[3])
m = re.search(r"([\d,]+) spans decoded", summary)
spans = int(m.group(1).replace(",", "")) if m else 0
cpu = user + system
print(json.dumps({
    "spans": spans, "requests": load["requests"], "retries": load["retries"],
    "spans_per_request": load["spans_per_request"], "load_seconds": load["seconds"],
    "job_cpu_seconds": round(cpu, 2),
    "spans_per_second": round(spans / load["seconds"]),
    "spans_per_cpu_second": round(spans / cpu),
}))
PY
grep -i "otlp receiver" "$dir/summary" || true
