#!/usr/bin/env bash
# permessage-deflate on and off, side by side in one invocation: the same subscribers (offering
# compression, as browsers do) and the same 2 KB feed-like JSON publications, against Herald
# with `[websocket] compression` off, then on. Reports server CPU per delivery and the WebSocket
# bytes per delivery (frames as the subscribers read them, headers included).
#
#   bench/compression.sh                     # 1,000 subscribers × 20 msg/s for 10 s
#   SUBSCRIBERS=5000 RATE=10 bench/compression.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATE=${RATE:-20}
SECONDS_RUN=${SECONDS_RUN:-10}
PAYLOAD=${PAYLOAD:-2048}
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -p herald-server -p herald-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
work=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$work"' EXIT
echo "| compression | delivered | lost / dup / ooo | p50 ms | p99 ms | CPU µs/delivery (user) | wire bytes/delivery |"
echo "|---|---|---|---|---|---|---|"
for compression in false true; do
  rm -rf "$work/data"
  HERALD_WEBSOCKET__COMPRESSION=$compression RUST_LOG=warn taskset -c 0 "$target_dir/release/herald" serve \
    --listen 127.0.0.1:18760 --data-dir "$work/data" > "$work/out" 2>&1 &
  PID=$!
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/18760) 2>/dev/null && break; sleep 0.05; done
  taskset -c 1 "$target_dir/release/herald-bench" --transport ws-deflate --url http://127.0.0.1:18760 \
    --subscribers "$SUBSCRIBERS" --rate "$RATE" --seconds "$SECONDS_RUN" --payload "$PAYLOAD" --json-payload \
    --server-pid "$PID" > "$work/result.json"
  python3 - "$compression" "$work/result.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(f"| {sys.argv[1]} | {r['delivered']} | {r['lost']} / {r['duplicated']} / {r['out_of_order']} | "
      f"{r['latency_ms_p50']:.2f} | {r['latency_ms_p99']:.2f} | "
      f"{r['server_cpu_us_per_delivery']:.2f} ({r['server_user_us_per_delivery']:.2f}) | "
      f"{r['wire_bytes_per_delivery']:.0f} |")
PY
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
done
