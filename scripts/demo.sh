#!/usr/bin/env bash
# Starts the demo: the gateway on 127.0.0.1:8080 and [::1]:8080 in front of the
# embedded sample user-record API (127.0.0.1:8090), metrics on 127.0.0.1:9091.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked -- serve --config config/demo.yaml
