#!/usr/bin/env bash
# Cross-node fan-out: the memory engine (one node) next to the Redis and NATS engines
# (subscribers on one node, publishes through another, both on the machine's Redis or NATS),
# in one invocation.
#
#   bench/cluster.sh [--quick]      # needs Redis on 127.0.0.1:6379 (REDIS_URL) and NATS with
#                                   # JetStream on 127.0.0.1:4222 (NATS_URL)
#
# Node A (the subscribers') runs on core 0, node B and the generator on core 1; Redis floats.
# Server CPU is node A's alone (the one fanning out to the subscribers). One JSON line per run
# goes to bench/results/cluster-<time>.jsonl, then the table.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=false
[ "${1:-}" = "--quick" ] && quick=true
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/}
nats_url=${NATS_URL:-nats://127.0.0.1:4222}
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -p herald-server -p herald-bench
herald="$target_dir/release/herald"
generator="$target_dir/release/herald-bench"
mkdir -p bench/results
results="bench/results/cluster-$(date +%Y%m%d-%H%M%S).jsonl"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start_node() { # name port core config
  mkdir -p "$work/$1"
  printf '%s' "$4" > "$work/$1/herald.toml"
  RUST_LOG=warn taskset -c "$3" "$herald" serve --listen "127.0.0.1:$2" --data-dir "$work/$1" \
    --config "$work/$1/herald.toml" > "$work/$1/log" 2>&1 &
  echo $!
}
wait_ready() {
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/readyz" > /dev/null && return 0; sleep 0.1; done
  echo "node on $1 never ready" >&2; return 1
}

seconds=10; subs=1000; rate=100; fan=5000; fan_rate=10
if $quick; then seconds=3; subs=200; fan=1000; fi

run() { # label engine subscribers rate
  local label=$1 engine=$2 n=$3 r=$4 config="" a b="" pub
  case $engine in
    redis) config=$(printf 'engine = "redis"\n[redis]\nurls = ["%s"]\n' "$redis_url") ;;
    nats) config=$(printf 'engine = "nats"\n[nats]\nurl = "%s"\n' "$nats_url") ;;
  esac
  a=$(start_node a 18771 0 "$config"); wait_ready 18771
  pub=http://127.0.0.1:18771
  if [ "$engine" != memory ]; then b=$(start_node b 18772 1 "$config"); wait_ready 18772; pub=http://127.0.0.1:18772; fi
  echo "== $label" >&2
  taskset -c 1 "$generator" --target herald --transport ws --url http://127.0.0.1:18771 --publish-url "$pub" \
    --subscribers "$n" --rate "$r" --seconds "$seconds" --server-pid "$a" --label "$label" >> "$results" ||
    echo "   (run failed)" >&2
  kill $a $b 2>/dev/null || true; wait $a $b 2>/dev/null || true; sleep 0.5
}

for engine in memory redis nats; do
  label="$engine, A subscribes, B publishes"
  [ $engine = memory ] && label="memory, one node"
  run "$label: $subs x ${rate}/s" $engine $subs $rate
  run "$label: $fan x ${fan_rate}/s" $engine $fan $fan_rate
done
python3 bench/table.py "$results"
echo "results: $results" >&2
