#!/usr/bin/env python3
"""Turn wrk's text output into one herald-bench-style JSON line (label, requests/s, latency)."""
import json
import re
import sys

path, label = sys.argv[1], sys.argv[2]
text = open(path).read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
latency = re.search(r"Latency\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", text)
unit = {"us": 0.001, "ms": 1.0, "s": 1000.0}
print(json.dumps({
    "label": label, "target": "herald", "transport": "http-publish",
    "requests_per_second": float(rps.group(1)) if rps else None,
    "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    "socket_errors": errors.group(1) if errors else None,
    "latency_ms_avg": float(latency.group(1)) * unit[latency.group(2)] if latency else None,
    "latency_ms_max": float(latency.group(5)) * unit[latency.group(6)] if latency else None,
}))
