#!/usr/bin/env bash
# Alternates `spanflow bench` runs of several binaries (A/B comparison on a noisy machine).
#
#   scripts/bench-ab.sh ROUNDS SPANS BINARY...
#   RUNS=5 scripts/bench-ab.sh ROUNDS SPANS BINARY...   (each bench runs the job 5 times)
#   JOB=path/to/job.yaml scripts/bench-ab.sh ...        (another job than jobs/demo.yaml)
#
# Prints one line per bench: binary, spans per CPU-second, spans per second, CPU seconds,
# peak RSS (MiB), page faults, the load average when it ended and, with RUNS > 1, every
# run's spans per CPU-second (the first figures are the median run's).
set -euo pipefail
rounds=$1 spans=$2
shift 2
job="${JOB:-$(cd "$(dirname "$0")/.." && pwd)/jobs/demo.yaml}"
for _ in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    out=$("$bin" bench "$job" --spans "$spans" --runs "${RUNS:-1}" --json 2>/dev/null)
    line=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["spans_per_cpu_second"]), round(d["spans_per_second"]), round(d["cpu_seconds"], 2), round(d["peak_rss_bytes"] / 2**20), d.get("page_faults", "-"), [round(r["spans_per_cpu_second"]) for r in d.get("runs", [])])' <<<"$out")
    echo "$bin $line load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
