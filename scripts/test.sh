#!/usr/bin/env bash
# The whole test suite: unit, property and integration tests. Integration tests
# start the real gateway binary on 127.0.0.1 / ::1 with ephemeral ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --locked --workspace --all-targets
