#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain (libFuzzer via libfuzzer-sys, with the
# sanitizer-coverage flags cargo-fuzz passes, minus its nightly-only -Z flags).
#
#   scripts/fuzz.sh [target] [seconds] [extra libFuzzer flags…]
#   targets: pgoutput, binlog, envelope, config (default: all four, one after the other)
#   seconds: per target (default 300)
#
# Starts from the committed corpus fuzz/corpus/<target>; new interesting inputs go to
# fuzz/runs/<target>/corpus (not committed), crashes to fuzz/artifacts/<target>/.
# A crash reproduces with: fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
TARGETS=(pgoutput binlog envelope config)
if [ $# -ge 1 ] && [ "$1" != "all" ]; then TARGETS=("$1"); fi
SECONDS_EACH="${2:-300}"
shift $(( $# > 2 ? 2 : $# ))
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the instrumentation off build scripts and proc macros.
(cd fuzz && cargo build --release --target "$TRIPLE" --bins)
for t in "${TARGETS[@]}"; do
  bin="fuzz/target/$TRIPLE/release/$t"
  mkdir -p "fuzz/runs/$t/corpus" "fuzz/artifacts/$t"
  echo "== $t for ${SECONDS_EACH}s"
  "$bin" "fuzz/runs/$t/corpus" "fuzz/corpus/$t" \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 "$@"
done
