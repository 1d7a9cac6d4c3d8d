#!/usr/bin/env bash
# Starts the demo: the sample user-record API (its own crate, demo/) on
# 127.0.0.1:8090 and the gateway on 127.0.0.1:8080 and [::1]:8080 in front of
# it, the same over TLS on 127.0.0.1:8443, metrics on 127.0.0.1:9091.
# Ctrl-C (or SIGTERM) stops both.
#
# The live policy and its audit log are kept in target/demo-state/, a copy of
# config/policy.yaml made at each start, so the walk-through's management
# calls never change the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked -p recordgate -p recordgate-demo --bin recordgate --bin recordgate-demo

state=target/demo-state
mkdir -p "$state"
cp config/policy.yaml "$state/policy.yaml"
rm -f "$state/policy.audit.jsonl"
# The same settings as config/demo.yaml, with the policy in the state directory.
sed 's|^policy: policy.yaml|policy: policy.yaml  # the copy in target/demo-state|' \
  config/demo.yaml >"$state/demo.yaml"

# TLS on :8443 with a self-signed certificate made at each start, kept in
# target/demo-state/tls/ (git-ignored, never committed). Clients trust it
# with `curl --cacert target/demo-state/tls/demo.crt https://localhost:8443/...`.
mkdir -p "$state/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$state/tls/demo.key" -out "$state/tls/demo.crt" 2>/dev/null
chmod 600 "$state/tls/demo.key"
cat >>"$state/demo.yaml" <<'EOF'
tls_listen:
  - address: "127.0.0.1:8443"
    name: demo
    http2: true              # ALPN h2, then http/1.1
    certificates:
      - cert: tls/demo.crt   # relative to this file: target/demo-state/tls/
        key: tls/demo.key
EOF

# End-user tokens: the key their bindings are hashed with, made at each
# start (never committed); the bindings start empty, like the sample API's
# own tokens.
openssl rand -hex 32 >"$state/token-hash.key"
chmod 600 "$state/token-hash.key"
rm -f "$state/policy.tokens.jsonl"
cat >>"$state/demo.yaml" <<'EOF'
tokens:
  hash_key: {file: token-hash.key}   # relative to the policy: target/demo-state/
EOF

target/release/recordgate-demo --listen 127.0.0.1:8090 --records 300 &
demo_pid=$!
gw_pid=""
stop() {
  [ -n "$gw_pid" ] && kill -TERM "$gw_pid" 2>/dev/null || true
  kill -TERM "$demo_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

target/release/recordgate serve --config "$state/demo.yaml" &
gw_pid=$!
wait "$gw_pid"
