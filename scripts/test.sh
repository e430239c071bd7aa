#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then builds and runs
# every test (unit, property, integration against real brokers and stores),
# and builds the fuzz targets and benches so they cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."

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
