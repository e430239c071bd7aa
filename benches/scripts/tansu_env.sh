# Sourced by the benchmark scripts that run against a tansu broker process:
# checks the binaries, makes a scratch DIR, starts tansu in it on a free
# PORT (MPORT = PORT + 1 is left for a metrics listener) and waits until it
# accepts connections. The caller's EXIT trap must call `tansu_cleanup`
# (after stopping its own children).
DIR=""
TPID=""
tansu_cleanup() {
  [ -n "$TPID" ] && kill "$TPID" 2>/dev/null
  [ -n "$DIR" ] && rm -rf "$DIR"
  return 0
}
TANSU=${ESTATE_TANSU:-$HOME/.cargo/bin/tansu}
BENCH=target/release/estate-ingest-bench
ESTATE=target/release/estate
for b in "$TANSU" "$BENCH" "$ESTATE"; do
  [ -x "$b" ] || { echo "missing $b (see the header of $0)" >&2; exit 1; }
done
DIR=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
MPORT=$((PORT + 1))
( cd "$DIR" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine sqlite://tansu.db >tansu.log 2>&1 ) &
TPID=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
# median_ratio LABEL RATIO... prints the median of the per-run ratios.
median_ratio() {
  python3 - "$@" <<'PY'
import statistics, sys
label, r = sys.argv[1], [float(x) for x in sys.argv[2:]]
print(f"ratio {label}: median {statistics.median(r):.2f} over {len(r)} runs ({', '.join(f'{x:.2f}' for x in r)})")
PY
}
