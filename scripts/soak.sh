#!/usr/bin/env bash
# Soak test at full length on a release build: worker threads send a mix of
# allowed, denied and writing requests while the policy is changed live
# through the management API; every answer is checked against the policy in
# force at that moment, and the gateway's resident memory must stay flat.
#
# Usage (from anywhere; it runs from the repository root):
#   scripts/soak.sh            # 180 s (+20 s warm-up), 16 workers
#   scripts/soak.sh 600        # 600 s
#   scripts/soak.sh 600 32     # 600 s, 32 workers
# Environment: RECORDGATE_SOAK_SECS / RECORDGATE_SOAK_WORKERS are used when
# no argument is given. The plain `cargo test` runs the same test for ~10 s.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-${RECORDGATE_SOAK_SECS:-180}}"
workers="${2:-${RECORDGATE_SOAK_WORKERS:-16}}"
case "$secs$workers" in
  *[!0-9]*|'') echo "usage: $0 [seconds] [workers]" >&2; exit 2 ;;
esac

echo "soak: ${secs} s, ${workers} workers (release build)" >&2
RECORDGATE_SOAK_SECS="$secs" RECORDGATE_SOAK_WORKERS="$workers" \
  cargo test --locked --release --test soak -- --nocapture
