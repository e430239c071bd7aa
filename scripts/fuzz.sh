#!/usr/bin/env bash
# Fuzzes every target for a bounded time and prints executions per target.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
#
# Targets (see docs/reliability.md, "Fuzzing"):
# - scanner (estate-schemas unit tests: the wire scanner against its serde
#   reference), nmis_line, spool_records, spool_open (estate-poller unit
#   tests) and guard, guard_variants (estate-query unit tests): the stable-toolchain
#   mutation fuzzer of schemas/src/fuzz.rs (feature `fuzzing`), run for SECONDS each through
#   ESTATE_FUZZ_SECONDS (ESTATE_FUZZ_SEED=<u64> replays a seed). Debug
#   builds: the same ones `cargo test` uses, so nothing extra is compiled.
# - decode (schemas/fuzz, cargo-fuzz/libFuzzer): built on stable it has no
#   coverage feedback; with a nightly toolchain use
#   `cargo +nightly fuzz run decode` from schemas/ instead.
# A failing target prints the input that broke it and the script exits
# non-zero after running the rest.
set -uo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
[[ $secs =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2; }
failed=0

for crate in estate-schemas estate-poller estate-query; do
    echo "== $crate: ${secs} s per target"
    # Built per crate (not -p a -p b: unified features would rebuild deps).
    cargo test -p "$crate" --lib --locked --no-run 2>&1 | tail -n 1
    log=$(mktemp)
    # One target at a time, so each gets a core and the figures compare.
    if ESTATE_FUZZ_SECONDS=$secs cargo test -p "$crate" --lib --locked fuzz_ -- --nocapture --test-threads=1 >"$log" 2>&1; then
        grep -oE 'fuzz [a-z_]+: .*' "$log"
        rm -f "$log"
    else
        failed=1
        grep -oE 'fuzz [a-z_]+: .*' "$log"
        tail -n 40 "$log"
        echo "$crate: a target FAILED (full log: $log)"
    fi
done

echo "== decode (cargo-fuzz target on stable: random mutation, no coverage feedback): ${secs} s"
cargo build --locked --manifest-path schemas/fuzz/Cargo.toml 2>&1 | tail -n 1
work=$(mktemp -d)
mkdir -p "$work/corpus" "$work/artifacts"
cp schemas/fuzz/corpus/decode/* "$work/corpus"/
if schemas/fuzz/target/debug/decode "$work/corpus" -max_total_time="$secs" -artifact_prefix="$work/artifacts/" \
    >"$work/log" 2>&1; then
    runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$work/log" | tail -n 1)
    echo "fuzz decode: ${runs:-? (no summary line; see $work/log)}"
    rm -rf "$work"
else
    failed=1
    tail -n 30 "$work/log"
    echo "fuzz decode: FAILED; crashing input kept in $work/artifacts/"
fi

exit $failed
