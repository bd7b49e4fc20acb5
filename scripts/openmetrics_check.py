"""Parses an OpenMetrics exposition with the official Prometheus client's parser.

Reads the text on stdin; prints JSON: every family's name and type, and every
exemplar's (family, trace_id, span_id). Exits non-zero (with the parser's message)
when the text is not valid OpenMetrics.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

families = []
exemplars = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({"name": family.name, "type": family.type, "samples": len(family.samples)})
    for s in family.samples:
        if s.exemplar is not None:
            exemplars.append({
                "family": family.name,
                "trace_id": s.exemplar.labels.get("trace_id"),
                "span_id": s.exemplar.labels.get("span_id"),
            })
json.dump({"families": families, "exemplars": exemplars}, sys.stdout)
