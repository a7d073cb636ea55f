#!/usr/bin/env bash
# Herald side by side with other real-time servers, in one invocation, on this machine.
#
#   bench/compare.sh                   # every scenario, every server
#   bench/compare.sh --quick           # short runs, smaller counts (a few minutes)
#   SCENARIOS="2 3" SERVERS="herald nats" bench/compare.sh
#   HERALD_BASELINE=path/to/older/herald bench/compare.sh   # adds that build as "herald-baseline"
#
# The server runs pinned to core 0 and the load generator to core 1 (`taskset`); each run
# starts a fresh server so memory figures are its own. Peers are set up by this script: node
# `ws` and Socket.IO broadcast servers (npm, bench/peers), nats-server with WebSocket (Debian).
# Results: bench/results/<time>/results.jsonl and a Markdown table (also printed).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[ "${1:-}" = "--quick" ] && quick=true
SCENARIOS=${SCENARIOS:-"1 1b 2 3 4 5 6 7"}
SERVERS=${SERVERS:-"herald ws-broadcast socketio nats pushpin"}
# Another build of Herald (say, before a change) runs beside this one, in the same scenarios.
HERALD_BASELINE=${HERALD_BASELINE:-}
baseline=""
if [ -n "$HERALD_BASELINE" ]; then
  [ -x "$HERALD_BASELINE" ] || { echo "HERALD_BASELINE=$HERALD_BASELINE is not an executable" >&2; exit 2; }
  baseline=herald-baseline
  SERVERS="$SERVERS herald-baseline"
fi
SERVER_CORE=${SERVER_CORE:-0}
GENERATOR_CORE=${GENERATOR_CORE:-1}
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- set-up -----------------------------------------------------------------------------------
need_apt=()
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v pushpin >/dev/null || need_apt+=(pushpin)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
[ -d bench/peers/node_modules/ws ] && [ -d bench/peers/node_modules/socket.io ] ||
  (cd bench/peers && npm install --no-audit --no-fund --silent)
cargo build --release --locked -p herald-server -p herald-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
herald="$target_dir/release/herald"
generator="$target_dir/release/herald-bench"
out="bench/results/$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$out"
results="$out/results.jsonl"
work=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; [ -n "${BACKEND_PID:-}" ] && kill "$BACKEND_PID" 2>/dev/null; rm -rf "$work"' EXIT

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2
  return 1
}

# Starts server $1 pinned to the server core; sets PID, SUB_URL, PUB_URL.
start_server() {
  case "$1" in
    herald|herald-baseline)
      # Namespace "durable" keeps its history in the embedded SQLite storage; app "bench" is the
      # Pusher door's (its channel N is bench:N).
      printf '[namespaces.durable]\ndurable = true\nhistory_size = 1000\n\n[[pusher.apps]]\nid = "bench"\nkey = "bench-key"\nsecret = "bench-secret"\n' > "$work/herald.toml"
      rm -rf "$work/data"
      local binary=$herald
      [ "$1" = herald-baseline ] && binary=$HERALD_BASELINE
      RUST_LOG=warn taskset -c "$SERVER_CORE" "$binary" serve --listen 127.0.0.1:8750 --data-dir "$work/data" \
        --config "$work/herald.toml" > "$work/herald.log" 2>&1 &
      PID=$!; SUB_URL=http://127.0.0.1:8750; PUB_URL=$SUB_URL; wait_port 8750 ;;
    ws-broadcast)
      taskset -c "$SERVER_CORE" node bench/peers/ws-broadcast.js 8761 > "$work/ws.log" 2>&1 &
      PID=$!; SUB_URL=http://127.0.0.1:8761; PUB_URL=$SUB_URL/publish; wait_port 8761 ;;
    socketio)
      taskset -c "$SERVER_CORE" node bench/peers/socketio.js 8762 > "$work/socketio.log" 2>&1 &
      PID=$!; SUB_URL=http://127.0.0.1:8762; PUB_URL=$SUB_URL/publish; wait_port 8762 ;;
    nats)
      cat > "$work/nats.conf" <<CONF
listen: 127.0.0.1:4333
max_connections: 100000
websocket { listen: "127.0.0.1:8763", no_tls: true, compression: false }
CONF
      taskset -c "$SERVER_CORE" nats-server -c "$work/nats.conf" > "$work/nats.log" 2>&1 &
      PID=$!; SUB_URL=http://127.0.0.1:8763; PUB_URL=127.0.0.1:4333; wait_port 8763 ;;
    pushpin)
      # Pushpin (all its processes, and the GRIP backend it asks on every new request, are
      # measured). zurl must be among the services; the default message_rate (2,500/s) would
      # cap fan-out, so it is raised.
      taskset -c "$SERVER_CORE" node bench/peers/grip-backend.js 8764 > "$work/grip.log" 2>&1 &
      BACKEND_PID=$!
      mkdir -p "$work/pushpin-run" "$work/pushpin-log"
      echo "* 127.0.0.1:8764" > "$work/routes"
      sed -e "s#^services=.*#services=condure,zurl,pushpin-proxy,pushpin-handler#" \
          -e "s#^rundir=.*#rundir=$work/pushpin-run#" -e "s#^logdir=.*#logdir=$work/pushpin-log#" \
          -e "s#^routesfile=.*#routesfile=$work/routes#" -e "s#^message_rate=.*#message_rate=1000000#" \
          -e "s#^message_hwm=.*#message_hwm=1000000#" -e "s#^client_maxconn=.*#client_maxconn=50000#" \
          -e "s#^include=.*#include=$work/pushpin-internal.conf#" \
          /etc/pushpin/pushpin.conf > "$work/pushpin.conf"
      # Debian's internal.conf expects a system zurl under /var/run/zurl; point the proxy at
      # the zurl the runner starts instead.
      sed -e 's#ipc:///var/run/zurl/#ipc://{rundir}/{ipc_prefix}#' /usr/lib/pushpin/internal.conf \
        > "$work/pushpin-internal.conf"
      taskset -c "$SERVER_CORE" pushpin --config "$work/pushpin.conf" > "$work/pushpin.log" 2>&1 &
      PID=$!; SUB_URL=http://127.0.0.1:7999; PUB_URL=http://127.0.0.1:5561/publish/
      EXTRA_PIDS="--server-pid $BACKEND_PID"
      wait_port 7999; wait_port 5561; wait_port 8764 ;;
  esac
}

stop_server() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
  if [ -n "${BACKEND_PID:-}" ]; then
    kill "$BACKEND_PID" 2>/dev/null || true
    wait "$BACKEND_PID" 2>/dev/null || true
    BACKEND_PID=""
  fi
  EXTRA_PIDS=""
  sleep 0.5
}

# run LABEL SERVER TRANSPORT [generator flags...]: one fresh server, one generator run.
run() {
  local label=$1 server=$2 transport=$3
  shift 3
  case " $SERVERS " in *" $server "*) ;; *) return 0 ;; esac
  start_server "$server"
  echo "== $label: $server over $transport $*" >&2
  # The baseline speaks Herald's protocol; its results are named apart.
  local target=$server rename=s/^//
  [ "$server" = herald-baseline ] && target=herald rename='s/"target":"herald"/"target":"herald-baseline"/'
  taskset -c "$GENERATOR_CORE" "$generator" --target "$target" --transport "$transport" --url "$SUB_URL" \
    --publish-url "$PUB_URL" --server-pid "$PID" ${EXTRA_PIDS:-} --label "$label" "$@" | sed "$rename" >> "$results" ||
    echo "   (run failed)" >&2
  stop_server
}

has() { case " $SCENARIOS " in *" $1 "*) return 0 ;; esac; return 1; }

seconds=10; idle=15000; fan=5000; light=1000; many=10000
if $quick; then seconds=3; idle=2000; fan=1000; light=200; many=1000; fi

if has 1; then
  for server in herald $baseline ws-broadcast socketio nats; do
    run "1 idle" "$server" ws --subscribers $idle --rate 0
  done
  run "1 idle" herald sse --subscribers $idle --rate 0
  run "1 idle" herald poll --subscribers $idle --rate 0
fi
if has 1b; then
  # The most one process may hold here (about 20,000 open files), spread over source addresses.
  run "1b 19k connections" herald ws --subscribers 19000 --rate 1 --seconds 5 --source-addresses 4 --ramp 4000
fi
if has 2; then
  for rate in 10 40; do
    for server in herald $baseline ws-broadcast socketio nats; do
      run "2 fan-out ×$rate" "$server" ws --subscribers $fan --rate $rate --seconds $seconds
    done
  done
fi
if has 3; then
  for server in herald $baseline ws-broadcast socketio nats; do
    run "3 light" "$server" ws --subscribers $light --rate 10 --seconds $seconds
  done
fi
if has 4; then
  for server in herald $baseline ws-broadcast socketio nats; do
    run "4 hot channel" "$server" ws --subscribers 100 --rate 1000 --seconds $seconds
  done
fi
if has 5; then
  # Publishing over each server's own protocol: NATS's TCP protocol, Herald's WebSocket; and
  # Herald's HTTP API too, which costs more per publish (one publish = one delivery here).
  for server in herald nats; do
    run "5 many channels" "$server" ws --subscribers $many --channels $many --rate 2000 --seconds $seconds \
      $([ "$server" = herald ] && echo --publish-over-websocket)
  done
  run "5 many channels, HTTP publish" herald ws --subscribers $many --channels $many --rate 2000 --seconds $seconds
fi
if has 6; then
  for transport in ws pusher sse poll; do
    run "6 fan-out by transport" herald "$transport" --subscribers $fan --rate 10 --seconds $seconds
  done
  # Pushpin's proxy asks the backend for every new request: ramp more gently.
  for transport in sse poll; do
    run "6 fan-out by transport" pushpin "$transport" --subscribers $fan --rate 10 --seconds $seconds --ramp 500
  done
fi
if has 7; then
  case " $SERVERS " in *" herald "*)
    for channel in bench:wrk durable:wrk; do
      for connections in 1 100; do
        start_server herald
        echo "== 7 publish: wrk POST /api/publish to $channel, $connections connection(s), keep-alive" >&2
        HERALD_CHANNEL=$channel taskset -c "$GENERATOR_CORE" wrk -t1 -c$connections -d"${seconds}s" \
          -s bench/publish.lua "$SUB_URL/api/publish" > "$out/wrk-$channel-$connections.txt" 2>&1 || true
        python3 bench/wrk_report.py "$out/wrk-$channel-$connections.txt" \
          "7 publish API, $channel, $connections conn" >> "$results"
        stop_server
      done
    done
    run "7 publish over WS" herald ws --subscribers 1 --rate 20000 --seconds $seconds --publish-over-websocket ;;
  esac
fi

python3 bench/table.py "$results" | tee "$out/table.md"
echo "results: $out" >&2
