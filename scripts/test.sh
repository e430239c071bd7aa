#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then builds and runs
# every test (unit, property, integration against real brokers and stores),
# and builds the fuzz targets and benches so they cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."

# Disk: a cold run left 4.2 GiB under target/ and 0.35 GiB under
# schemas/fuzz/target here, plus about 1.4 GiB of crates and Python packages
# in the home directory, tansu's temporary build directory while it installs
# (removed afterwards), and test data in the temp dir. Say what there is up front, and again if anything fails, so a
# full disk is told apart from a failing test.
disk_report() { df -h . "${TMPDIR:-/tmp}" 2>/dev/null | awk '!seen[$0]++'; }
echo "== disk before the run"
disk_report
free_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
  echo "WARNING: under 8 GiB free here; the build may run out of disk (No space left on device)" >&2
fi
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "== disk when the run failed (exit $rc)"; disk_report; fi' EXIT
# Incremental compilation only pays off on rebuilds; on a cold run it costs
# about 700 MiB of disk and some build time.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

scripts/install-test-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

echo "== build"
cargo build --workspace --all-targets --locked

echo "== fuzz target (built on stable; a short run without coverage feedback"
echo "   checks it executes; real fuzzing: cargo +nightly fuzz run decode, see README)"
cargo build --locked --manifest-path schemas/fuzz/Cargo.toml
smoke=$(mktemp -d)
cp schemas/fuzz/corpus/decode/* "$smoke"/
schemas/fuzz/target/debug/decode "$smoke" -runs=20000 2>&1 | tail -1
rm -rf "$smoke"

echo "== tests"
# Integration tests start brokers and child processes; two at a time keeps a
# 2-core machine responsive and the fault timings meaningful.
cargo test --workspace --locked -- --test-threads=2
