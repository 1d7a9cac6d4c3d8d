#!/usr/bin/env bash
# Load test: sample upstream, a plain Pingora pass-through and recordgate with
# full enforcement, each driven by wrk with fixed connections; the load
# generator runs pinned to its own core (CPU 1), the servers on CPU 0.
#
#   benches/load.sh [seconds per run, default 10] [connections, default 32]
#
# Prints requests/s, p50/p99 latency, server CPU time per request and the ratio
# to the pass-through for a 2 KB /entity and a ~100 KB /entity.find.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-32}
command -v wrk >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq wrk; }
scripts/setup.sh
cargo build --release --locked --bin recordgate --bin passthrough 2>&1 | tail -1
BIN=target/release
CORES=$(nproc)
SRV_CPU=0; GEN_CPU=$(( CORES > 1 ? 1 : 0 ))

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

taskset -c $SRV_CPU $BIN/recordgate demo-upstream --listen 127.0.0.1:18090 --records 300 >/tmp/rg-load-upstream.log 2>&1 & pids+=($!)
taskset -c $SRV_CPU $BIN/passthrough 127.0.0.1:18081 127.0.0.1:18090 2 >/tmp/rg-load-passthrough.log 2>&1 & pids+=($!); PT_PID=$!
RUST_LOG=warn taskset -c $SRV_CPU $BIN/recordgate serve --config benches/load/settings.yaml >/tmp/rg-load-gateway.log 2>&1 & pids+=($!); GW_PID=$!
wait_port 18090; wait_port 18081; wait_port 18080

AUTH="Basic $(printf 'partner-readonly:partner-secret' | base64)"
cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }
TICK=$(getconf CLK_TCK)

# run PORT PATH PID BODY -> "rps p50 p99 cpu_us_per_req errors"
run() {
  local url="http://127.0.0.1:$1$2" pid=$3 body=$4
  BODY="$body" AUTH="$AUTH" taskset -c $GEN_CPU wrk -t1 -c"$CONNS" -d2s -s benches/load/post.lua "$url" >/dev/null
  local before; before=$(cpu_ticks "$pid")
  local out; out=$(BODY="$body" AUTH="$AUTH" taskset -c $GEN_CPU wrk -t1 -c"$CONNS" -d"${DURATION}s" -s benches/load/post.lua "$url")
  local after; after=$(cpu_ticks "$pid")
  local line; line=$(grep RESULT <<<"$out")
  local rps p50 p99 reqs errs non2xx
  rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$line"); p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line"); reqs=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  errs=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line"); non2xx=$(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$line")
  local cpu_us; cpu_us=$(awk -v a="$after" -v b="$before" -v t="$TICK" -v r="$reqs" 'BEGIN{ printf "%.1f", (a-b)/t*1e6/(r>0?r:1) }')
  echo "$rps $p50 $p99 $cpu_us $((errs + non2xx))"
}

printf "machine: %s, %s cores; %s s per run, %s connections, wrk on CPU %s, servers on CPU %s; %s\n" \
  "$(uname -m)" "$CORES" "$DURATION" "$CONNS" "$GEN_CPU" "$SRV_CPU" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf "%-14s %-28s %10s %9s %9s %12s %7s %8s\n" endpoint config "req/s" "p50 ms" "p99 ms" "CPU us/req" errors ratio
for case in "/entity|type_name=user&id=7" "/entity.find|type_name=user&max_results=50"; do
  path=${case%%|*}; body=${case#*|}
  read -r pt_rps pt_p50 pt_p99 pt_cpu pt_err < <(run 18081 "$path" "$PT_PID" "$body")
  read -r gw_rps gw_p50 gw_p99 gw_cpu gw_err < <(run 18080 "$path" "$GW_PID" "$body")
  printf "%-14s %-28s %10.0f %9.2f %9.2f %12s %7s %8s\n" "$path" "pingora pass-through" "$pt_rps" "$(awk -v v="$pt_p50" 'BEGIN{print v/1000}')" "$(awk -v v="$pt_p99" 'BEGIN{print v/1000}')" "$pt_cpu" "$pt_err" "1.00"
  printf "%-14s %-28s %10.0f %9.2f %9.2f %12s %7s %8.2f\n" "$path" "recordgate full enforcement" "$gw_rps" "$(awk -v v="$gw_p50" 'BEGIN{print v/1000}')" "$(awk -v v="$gw_p99" 'BEGIN{print v/1000}')" "$gw_cpu" "$gw_err" "$(awk -v a="$gw_rps" -v b="$pt_rps" 'BEGIN{print a/b}')"
done
