#!/usr/bin/env bash
# Load test: sample upstream, a plain Pingora pass-through and recordgate with
# full enforcement, each driven by wrk with fixed connections; the load
# generator runs pinned to its own core (CPU 1), the servers on CPU 0.
#
#   benches/load.sh [seconds per run, default 10] [connections, default 32] [rounds, default 3]
#
# Prints requests/s, p50/p99 latency, server CPU time per request and the ratio
# to the pass-through for a 2 KB /entity and a ~100 KB /entity.find.
#
# A shared machine drifts by 20 % or more within a minute, so one run of each
# server says little. Each endpoint gets a warm-up per server, then `rounds`
# pairs of runs that alternate pass-through and recordgate; every figure
# printed is the median over the rounds, and the ratio is the median of the
# per-round ratios (its range is printed too).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-32}
ROUNDS=${3:-3}
command -v wrk >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq wrk; }
scripts/setup.sh
cargo build --release --locked -p recordgate -p recordgate-demo --bin recordgate --bin recordgate-demo --example passthrough 2>&1 | tail -1
BIN=target/release
CORES=$(nproc)
SRV_CPU=0; GEN_CPU=$(( CORES > 1 ? 1 : 0 ))

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

taskset -c $SRV_CPU $BIN/recordgate-demo --listen 127.0.0.1:18090 --records 300 >/tmp/rg-load-upstream.log 2>&1 & pids+=($!)
taskset -c $SRV_CPU $BIN/examples/passthrough 127.0.0.1:18081 127.0.0.1:18090 2 >/tmp/rg-load-passthrough.log 2>&1 & pids+=($!); PT_PID=$!
# The gateway runs as shipped: access log on (RUST_LOG defaults to info), one JSON line per
# request to stdout, here thrown away so the disk is not measured.
env -u RUST_LOG taskset -c $SRV_CPU $BIN/recordgate serve --config benches/load/settings.yaml >/dev/null 2>/tmp/rg-load-gateway.log & pids+=($!); GW_PID=$!
wait_port 18090; wait_port 18081; wait_port 18080

AUTH="Basic $(printf 'partner-readonly:partner-secret' | base64)"
cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }
TICK=$(getconf CLK_TCK)

# warm PORT PATH BODY: two seconds of load, not measured.
warm() {
  BODY="$3" AUTH="$AUTH" taskset -c $GEN_CPU wrk -t1 -c"$CONNS" -d2s -s benches/load/post.lua "http://127.0.0.1:$1$2" >/dev/null
}

# run PORT PATH PID BODY -> "rps p50 p99 cpu_us_per_req errors"
run() {
  local url="http://127.0.0.1:$1$2" pid=$3 body=$4
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

# median of the numbers on stdin
median() { sort -g | awk '{v[NR]=$1} END{ if (NR==0) print 0; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'; }
# column N of the lines in $1, one number per line
col() { awk -v c="$2" '{print $c}' <<<"$1"; }

printf "machine: %s, %s cores; %s rounds of %s s per server, %s connections, wrk on CPU %s, servers on CPU %s; %s\n" \
  "$(uname -m)" "$CORES" "$ROUNDS" "$DURATION" "$CONNS" "$GEN_CPU" "$SRV_CPU" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf "medians over the rounds; ratio = median of the per-round ratios (min-max)\n"
printf "%-14s %-28s %10s %9s %9s %12s %7s %8s %12s\n" endpoint config "req/s" "p50 ms" "p99 ms" "CPU us/req" errors ratio "range"
for case in "/entity|type_name=user&id=7" "/entity.find|type_name=user&max_results=50"; do
  path=${case%%|*}; body=${case#*|}
  warm 18081 "$path" "$body"; warm 18080 "$path" "$body"
  pt_runs=""; gw_runs=""; ratios=""
  for _ in $(seq 1 "$ROUNDS"); do
    pt=$(run 18081 "$path" "$PT_PID" "$body"); gw=$(run 18080 "$path" "$GW_PID" "$body")
    pt_runs+="$pt"$'\n'; gw_runs+="$gw"$'\n'
    ratios+="$(awk -v a="${gw%% *}" -v b="${pt%% *}" 'BEGIN{print a/b}')"$'\n'
  done
  pt_runs=${pt_runs%$'\n'}; gw_runs=${gw_runs%$'\n'}; ratios=${ratios%$'\n'}
  for who in pt gw; do
    runs=$([ $who = pt ] && echo "$pt_runs" || echo "$gw_runs")
    rps=$(col "$runs" 1 | median); p50=$(col "$runs" 2 | median); p99=$(col "$runs" 3 | median)
    cpu=$(col "$runs" 4 | median); errs=$(col "$runs" 5 | awk '{s+=$1} END{print s+0}')
    if [ $who = pt ]; then
      printf "%-14s %-28s %10.0f %9.2f %9.2f %12.1f %7s %8s %12s\n" "$path" "pingora pass-through" "$rps" "$(awk -v v="$p50" 'BEGIN{print v/1000}')" "$(awk -v v="$p99" 'BEGIN{print v/1000}')" "$cpu" "$errs" "1.00" ""
    else
      ratio=$(median <<<"$ratios"); lo=$(sort -g <<<"$ratios" | head -1); hi=$(sort -g <<<"$ratios" | tail -1)
      printf "%-14s %-28s %10.0f %9.2f %9.2f %12.1f %7s %8.2f %12s\n" "$path" "recordgate full enforcement" "$rps" "$(awk -v v="$p50" 'BEGIN{print v/1000}')" "$(awk -v v="$p99" 'BEGIN{print v/1000}')" "$cpu" "$errs" "$ratio" "$(printf '%.2f-%.2f' "$lo" "$hi")"
    fi
  done
done
