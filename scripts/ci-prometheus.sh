#!/usr/bin/env bash
# Prometheus checks for CI (needs promtool: Debian package `prometheus`):
#   1. promtool check rules   deploy/prometheus/recordgate-alerts.yaml
#      promtool test rules    deploy/prometheus/recordgate-alerts.test.yaml
#   2. promtool check config  deploy/prometheus/prometheus.yml (syntax only)
#   3. promtool check metrics on a live exposition: the gateway with its
#      embedded sample API on free loopback ports, a few allowed and denied
#      calls, one scrape of /metrics.
# Every wait is bounded; only the process this script starts is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool not found: apt-get install prometheus" >&2
  exit 1
fi

promtool check rules deploy/prometheus/recordgate-alerts.yaml
promtool test rules deploy/prometheus/recordgate-alerts.test.yaml
promtool check config --syntax-only deploy/prometheus/prometheus.yml

cargo build --locked --quiet -p recordgate -p recordgate-demo --bin recordgate --bin recordgate-demo
bin=target/debug/recordgate

tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  kill -TERM "${demo_pid:-}" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# A free loopback port: random candidates, at most 50 tries.
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  echo "no free port found" >&2
  return 1
}

# http_get PORT PATH [AUTHORIZATION]: prints the body (one request per
# connection, bounded by timeout). HTTP/1.1 + Connection: close, because the
# operator listener keeps HTTP/1.0 connections open (Pingora http_app).
http_get() {
  local port=$1 path=$2 auth=${3:-}
  timeout 10 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$0"
    if [ -n "$2" ]; then
      printf "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: %s\r\n\r\n" "$1" "$2" >&3
    else
      printf "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" "$1" >&3
    fi
    cat <&3' "$port" "$path" "$auth" | sed '1,/^\r\{0,1\}$/d'
}

gw_port=$(free_port)
up_port=$(free_port)
metrics_port=$(free_port)
cp config/policy.yaml "$tmp/policy.yaml"
cat >"$tmp/settings.yaml" <<EOF
listen: ["127.0.0.1:$gw_port"]
upstream:
  servers: ["127.0.0.1:$up_port"]
policy: policy.yaml
metrics:
  listen: "127.0.0.1:$metrics_port"
server:
  threads: 1
  grace_period_secs: 0
  graceful_shutdown_timeout_secs: 0
  pid_file: $tmp/rg.pid
  upgrade_sock: $tmp/rg.sock
EOF

target/debug/recordgate-demo --listen "127.0.0.1:$up_port" --records 20 >"$tmp/demo.log" 2>&1 &
demo_pid=$!
"$bin" serve --config "$tmp/settings.yaml" >"$tmp/gateway.log" 2>&1 &
pid=$!

ready=""
for _ in $(seq 1 100); do
  if [ "$(http_get "$metrics_port" /readyz 2>/dev/null)" = "ready" ]; then
    ready=yes
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "gateway not ready within 10 s:" >&2
  cat "$tmp/gateway.log" >&2
  exit 1
fi

owner="Basic $(printf 'demo-owner:owner-secret' | base64 -w0)"
wrong="Basic $(printf 'demo-owner:wrong' | base64 -w0)"
login="Basic $(printf 'login-app:login-secret' | base64 -w0)"
for _ in 1 2 3; do
  http_get "$gw_port" "/entity?type_name=user&id=1" "$owner" >/dev/null
  http_get "$gw_port" "/entity?type_name=user&id=1" "$wrong" >/dev/null
  http_get "$gw_port" "/entity?type_name=user&id=1" "$login" >/dev/null
done

http_get "$metrics_port" /metrics >"$tmp/metrics.txt"
grep -q '^recordgate_requests_total{.*decision="allowed"' "$tmp/metrics.txt" || {
  echo "no allowed requests in the exposition:" >&2
  cat "$tmp/metrics.txt" >&2
  exit 1
}
promtool check metrics <"$tmp/metrics.txt"
echo "prometheus checks passed (rules, config, $(grep -c '^recordgate_' "$tmp/metrics.txt") recordgate samples)"
