#!/usr/bin/env bash
# Bounded fuzzing run of every cargo-fuzz target in fuzz/fuzz_targets/.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 20 s, all targets)
#
# CI runs `fuzz/run.sh 15`; a longer local run is e.g. `fuzz/run.sh 600`.
# Exit status is non-zero if any target crashes (panic, failed assertion,
# sanitizer report, time-out or out-of-memory), if a saved regression input
# still fails, or if the build fails.
#
# Stable toolchain: cargo-fuzz passes nightly-only flags (`-Zsanitizer=address`
# through RUSTFLAGS, `-Cllvm-args=-sanitizer-coverage-*`); RUSTC_BOOTSTRAP=1
# lets stable rustc/cargo accept them. No nightly toolchain is needed: the
# AddressSanitizer runtime ships with the stable x86_64-unknown-linux-gnu std.
# (Without ASan, `SANITIZER=none fuzz/run.sh` also works and builds a bit faster.)
#
# Inputs: each target starts from its seed corpus (fuzz/corpus/<target>, read
# only) plus fuzz/regressions/<target> (inputs that once failed; each is run
# first). New corpus entries go to fuzz/work/<target> and crash inputs to
# fuzz/artifacts/<target>, both ignored by Git: copy a crash you want to keep
# into fuzz/regressions/<target>/. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"

secs="${1:-20}"
shift || true
case "$secs" in
'' | *[!0-9]*)
  echo "usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
  ;;
esac

export RUSTC_BOOTSTRAP=1
sanitizer="${SANITIZER:-address}"
# Debug assertions and overflow checks stay on (cargo-fuzz's default with -O -a).
build_flags=(--release --debug-assertions --sanitizer "$sanitizer")

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir "$here")
fi

echo "== building ${targets[*]} (sanitizer: $sanitizer)"
cargo fuzz build --fuzz-dir "$here" "${build_flags[@]}"

failed=()
for t in "${targets[@]}"; do
  work="$here/work/$t"
  artifacts="$here/artifacts/$t"
  mkdir -p "$work" "$artifacts"

  regressions=()
  if [ -d "$here/regressions/$t" ] && [ -n "$(ls -A "$here/regressions/$t")" ]; then
    regressions=("$here/regressions/$t")
    echo "== $t: replaying saved regressions"
    # Files (not a directory) make libFuzzer run each input once and stop.
    if ! cargo fuzz run --fuzz-dir "$here" "${build_flags[@]}" "$t" \
      "$here/regressions/$t"/* >"$work.regressions.log" 2>&1; then
      echo "!! $t: a saved regression input still fails, see $work.regressions.log"
      grep -E -B1 -A12 "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$work.regressions.log" | head -n 40 || true
      failed+=("$t (regression)")
      continue
    fi
  fi

  echo "== $t: fuzzing for ${secs}s"
  log="$work.log"
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: 2 GB is a leak
  # or a blow-up; -max_len: bodies up to 16 KB; -dict: JSON/YAML/form tokens.
  # shellcheck disable=SC2068
  if cargo fuzz run --fuzz-dir "$here" "${build_flags[@]}" "$t" \
    "$work" "$here/corpus/$t" ${regressions[@]+"${regressions[@]}"} -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
    -dict="$here/dicts/$t.dict" -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|peak_rss_mb)' "$log" || true
  else
    echo "!! $t: crash, see $log and $artifacts/"
    grep -E -A12 "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | head -n 40 || true
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "== FAILED: ${failed[*]}"
  exit 1
fi
echo "== all targets ran ${secs}s without a crash"
