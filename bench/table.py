#!/usr/bin/env python3
"""Print herald-bench results (JSON lines) as a Markdown table, then Herald's ratios to peers."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("| run | server | transport | subs × ch | msg/s | delivered | lost | dup | ooo | p50 ms | p99 ms | max ms | CPU µs/delivery (user) | idle KiB/conn |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
fmt = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"
for r in rows:
    if "requests_per_second" in r:
        continue
    print(f"| {r['label']} | {r['target']} | {r['transport']} | {r['subscribers']} × {r['channels']} | {r['rate']} | "
          f"{r['delivered']} | {r['lost']} | {r['duplicated']} | {r['out_of_order']} | {r['latency_ms_p50']:.2f} | "
          f"{r['latency_ms_p99']:.2f} | {r['latency_ms_max']:.1f} | {fmt(r['server_cpu_us_per_delivery'])} "
          f"({fmt(r.get('server_user_us_per_delivery'))}) | "
          f"{fmt(r['idle_kib_per_connection'])} |")
for r in rows:
    if "requests_per_second" in r:
        print(f"\n{r['label']}: {fmt(r['requests_per_second'], 0)} publishes/s, avg latency "
              f"{fmt(r['latency_ms_avg'])} ms, non-2xx {r['non_2xx']}, socket errors: {r['socket_errors'] or 'none'}")

def find(label, target, transport="ws"):
    for r in rows:
        if r["label"] == label and r["target"] == target and r["transport"] == transport:
            return r
    return None

print("\nHerald's ratios to peers in this run (server CPU per delivery; lower is better):")
for label in sorted({r["label"] for r in rows if "server_cpu_us_per_delivery" in r}):
    herald = find(label, "herald")
    if not herald or herald.get("server_cpu_us_per_delivery") is None:
        continue
    parts = []
    for peer in ("herald-baseline", "wsbroadcast", "socketio", "nats"):
        other = find(label, peer)
        if other and other.get("server_cpu_us_per_delivery"):
            parts.append(f"{herald['server_cpu_us_per_delivery'] / other['server_cpu_us_per_delivery']:.2f}× {peer}")
    if parts:
        print(f"- {label}: " + ", ".join(parts))
