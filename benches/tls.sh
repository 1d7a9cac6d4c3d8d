#!/usr/bin/env bash
# TLS and HTTP/2 load test: recordgate terminating TLS (full enforcement)
# against nginx terminating TLS in front of the same sample upstream (a
# plain proxy: what TLS and proxying alone cost), so the ratio is the cost
# of the gateway's own work on top of TLS. Servers on CPU 0, load
# generators on CPU 1, as in load.sh.
#
#   benches/tls.sh [seconds per run, default 10] [rounds, default 3]
#
# Cases: HTTPS/1.1 kept alive (wrk, 32 connections); HTTP/2 (h2load, 4
# connections x 16 streams); a new TLS 1.3 handshake for every request (wrk
# with `Connection: close`: the handshake rate). The certificate is an
# ECDSA P-256 one made at start in a temporary directory.
#
# nginx's keepalive_requests is raised in benches/tls/nginx.conf: at its
# default (1,000) nginx ends each HTTP/2 connection with GOAWAY and h2load,
# which does not reconnect, counts the streams in flight as failures.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${2:-3}
for tool in wrk h2load nginx; do
  command -v $tool >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq wrk nghttp2-client nginx; break; }
done
scripts/setup.sh
cargo build --release --locked -p recordgate -p recordgate-demo --bin recordgate --bin recordgate-demo 2>&1 | tail -1
BIN=target/release
CORES=$(nproc)
SRV_CPU=0; GEN_CPU=$(( CORES > 1 ? 1 : 0 ))
WORK=$(mktemp -d)

pids=()
cleanup() {
  # nginx's complaints (upstream errors, closed connections) explain failures in its rows.
  [ -s "$WORK/nginx.err" ] && { echo "nginx error log (last 20 lines):" >&2; tail -20 "$WORK/nginx.err" >&2; }
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"
}
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

sed -e "s#^listen: .*#listen: [\"127.0.0.1:18080\"]\ntls_listen:\n  - address: 127.0.0.1:18443\n    http2: true\n    certificates: [{cert: $WORK/cert.pem, key: $WORK/key.pem}]#" \
    -e "s#policy: ../../config/policy.yaml#policy: $PWD/config/policy.yaml#" \
    benches/load/settings.yaml > "$WORK/settings.yaml"
sed -e "s#@WORK@#$WORK#g" benches/tls/nginx.conf > "$WORK/nginx.conf"

taskset -c $SRV_CPU $BIN/recordgate-demo --listen 127.0.0.1:18090 --records 300 >/dev/null 2>&1 & pids+=($!)
taskset -c $SRV_CPU nginx -c "$WORK/nginx.conf" & pids+=($!); NGINX_PID=$!
env -u RUST_LOG taskset -c $SRV_CPU $BIN/recordgate serve --config "$WORK/settings.yaml" >/dev/null 2>"$WORK/gateway.log" & pids+=($!); GW_PID=$!
wait_port 18090; wait_port 18444; wait_port 18443
# nginx's one worker does the work; its master only waits.
NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1)

AUTH="Basic $(printf 'partner-readonly:partner-secret' | base64)"
BODY='type_name=user&id=7'
printf "%s" "$BODY" > "$WORK/post-body"
cpu_ticks() { awk '{print $14+$15}' /proc/"$1"/stat; }
TICK=$(getconf CLK_TCK)

# measure KIND PORT PID -> "rps cpu_us_per_req failures"
measure() {
  local kind=$1 port=$2 pid=$3 before after out rps reqs fails
  before=$(cpu_ticks "$pid")
  case $kind in
    h1|handshake)
      local extra=()
      [ "$kind" = handshake ] && extra=(-H "Connection: close")
      out=$(BODY="$BODY" AUTH="$AUTH" taskset -c $GEN_CPU wrk -t1 -c32 -d"${DURATION}s" "${extra[@]}" -s benches/load/post.lua "https://localhost:$port/entity")
      local line; line=$(grep RESULT <<<"$out")
      rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$line"); reqs=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
      fails=$(( $(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line") + $(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$line") ))
      ;;
    h2)
      out=$(taskset -c $GEN_CPU h2load -c4 -m16 -D "$DURATION" -d "$WORK/post-body" \
        -H "authorization: $AUTH" -H "content-type: application/x-www-form-urlencoded" \
        "https://localhost:$port/entity" 2>&1)
      rps=$(grep -oE 'finished in [0-9.]+s, [0-9.]+ req/s' <<<"$out" | awk '{print $4}')
      reqs=$(grep -E '^requests:' <<<"$out" | awk '{print $8}')
      fails=$(( $(grep -E '^requests:' <<<"$out" | awk '{print $10}') + $(grep -E '^status codes:' <<<"$out" | awk '{print $5+$7+$9}') ))
      ;;
  esac
  after=$(cpu_ticks "$pid")
  echo "$rps $(awk -v a="$after" -v b="$before" -v t="$TICK" -v r="$reqs" 'BEGIN{ printf "%.1f", (a-b)/t*1e6/(r>0?r:1) }') $fails"
}

median() { sort -g | awk '{v[NR]=$1} END{ if (NR==0) print 0; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2 }'; }
col() { awk -v c="$2" '{print $c}' <<<"$1"; }

printf "machine: %s, %s cores; %s rounds of %s s per server; load on CPU %s, servers on CPU %s; %s\n" \
  "$(uname -m)" "$CORES" "$ROUNDS" "$DURATION" "$GEN_CPU" "$SRV_CPU" "$(date -u +%Y-%m-%dT%H:%MZ)"
printf "medians over the rounds; ratio = median of the per-round ratios recordgate/nginx (min-max)\n"
printf "%-22s %-30s %10s %12s %8s %8s %12s\n" case server "req/s" "CPU us/req" failures ratio range
for kind in h1 h2 handshake; do
  label=$(case $kind in h1) echo "HTTPS/1.1 keep-alive";; h2) echo "HTTP/2 over TLS";; handshake) echo "new TLS conn per req";; esac)
  measure $kind 18444 "$NGINX_WORKER" >/dev/null; measure $kind 18443 "$GW_PID" >/dev/null
  ng_runs=""; gw_runs=""; ratios=""
  for _ in $(seq 1 "$ROUNDS"); do
    ng=$(measure $kind 18444 "$NGINX_WORKER"); gw=$(measure $kind 18443 "$GW_PID")
    ng_runs+="$ng"$'\n'; gw_runs+="$gw"$'\n'
    ratios+="$(awk -v a="${gw%% *}" -v b="${ng%% *}" 'BEGIN{print (b>0? a/b : 0)}')"$'\n'
  done
  for who in ng gw; do
    runs=$([ $who = ng ] && echo "${ng_runs%$'\n'}" || echo "${gw_runs%$'\n'}")
    rps=$(col "$runs" 1 | median); cpu=$(col "$runs" 2 | median); fails=$(col "$runs" 3 | awk '{s+=$1} END{print s+0}')
    if [ $who = ng ]; then
      printf "%-22s %-30s %10.0f %12.1f %8s %8s %12s\n" "$label" "nginx TLS proxy" "$rps" "$cpu" "$fails" "1.00" ""
    else
      r=${ratios%$'\n'}
      printf "%-22s %-30s %10.0f %12.1f %8s %8.2f %12s\n" "$label" "recordgate full enforcement" "$rps" "$cpu" "$fails" \
        "$(median <<<"$r")" "$(printf '%.2f-%.2f' "$(sort -g <<<"$r" | head -1)" "$(sort -g <<<"$r" | tail -1)")"
    fi
  done
done
