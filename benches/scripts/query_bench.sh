#!/usr/bin/env bash
# The query benchmark: generates an estate in the production layout (default
# 10M events), starts `estate query` on it, and times the eight standard
# queries against DuckDB on the same tables (benches/scripts/duckdb_compare.py).
# Needs a release build (cargo build --release -p estate -p estate-benches)
# and the venv from scripts/install-test-deps.sh.
#
#   benches/scripts/query_bench.sh [EVENTS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
EVENTS=${1:-10000000}
THREADS=${2:-$(nproc)}
PY=${ESTATE_TEST_PYTHON:-$HOME/.cache/estate/venv/bin/python}
DIR=$(mktemp -d)
trap 'kill $QPID 2>/dev/null; rm -rf "$DIR"' EXIT
target/release/estate-bench-data --store "$DIR/store" --events "$EVENTS"
du -sh "$DIR/store/events"
printf '[[token]]\ntoken = "bench-operator"\nrole = "operator"\n[[token]]\ntoken = "bench-tenant-1"\ntenant = "tenant-001"\n' > "$DIR/tokens.toml"
PORT=$((20000 + RANDOM % 20000))
target/release/estate query --store "$DIR/store" --auth-file "$DIR/tokens.toml" \
  --http-addr "127.0.0.1:$PORT" --flight-addr "127.0.0.1:$((PORT + 1))" \
  --query-threads "$THREADS" --query-memory 4GiB --max-concurrent-per-tenant 10 --log warn &
QPID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
"$PY" benches/scripts/duckdb_compare.py bench --url "http://127.0.0.1:$PORT" --token bench-operator \
  --tenant-token bench-tenant-1 --store "$DIR/store" --threads "$THREADS" --runs 5 --out "${OUT:-/dev/null}"
