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

echo "== tests"
# Integration tests start brokers and child processes; two at a time keeps a
# 2-core machine responsive and the fault timings meaningful.
cargo test --workspace --locked -- --test-threads=2
