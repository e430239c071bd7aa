#!/usr/bin/env bash
# Stepped capacity runs of `estate standalone`, alternating between one or
# more estate binaries, each run on a fresh data directory.
#
#   benches/scripts/capacity_standalone.sh RUNS BIN [BIN ...]
#
# Each run: start `BIN standalone` (no demo) on free loopback ports, wait
# until ingest holds its partitions (so the first step does not carry the
# consumer group's join), then `BIN loadgen --capacity` with the documented
# stepped settings (10k/s up by 10k/s, 30 s steps, SLO 2 s, 12 tenants, no
# duplicates, malformed messages or mirror pairs), then Ctrl-C the
# standalone. Reports go to $OUT_DIR (default ./capacity-runs): one JSON and
# one SVG per run, and the standalone's log. Extra loadgen flags can be given
# in CAPACITY_ARGS (e.g. "--kafka-opt linger.ms=50"), extra standalone flags
# in STANDALONE_ARGS (e.g. "--partitions 6").
#
# Prints one line per run: binary, max sustained rate, and per step p50/p99.
set -euo pipefail

runs=${1:?usage: capacity_standalone.sh RUNS BIN [BIN ...]}
shift
[ $# -ge 1 ] || { echo "usage: capacity_standalone.sh RUNS BIN [BIN ...]" >&2; exit 2; }
out_dir=${OUT_DIR:-capacity-runs}
mkdir -p "$out_dir"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

one_run() {
  local bin=$1 tag=$2
  local data http flight metrics log sa broker token
  data=$(mktemp -d /tmp/estate-cap.XXXXXX)
  http=$(free_port); flight=$(free_port); metrics=$(free_port)
  log="$out_dir/$tag.standalone.log"
  # shellcheck disable=SC2086
  "$bin" standalone --data-dir "$data" --http-addr "127.0.0.1:$http" --flight-addr "127.0.0.1:$flight" \
    --metrics-addr "127.0.0.1:$metrics" ${STANDALONE_ARGS:-} >"$log" 2>&1 &
  sa=$!
  broker=""
  for _ in $(seq 1 300); do
    broker=$(sed -n 's/^  broker *\([0-9.:]*\) .*/\1/p' "$log" | head -1)
    [ -n "$broker" ] && break
    kill -0 "$sa" 2>/dev/null || { echo "standalone exited early; see $log" >&2; return 1; }
    sleep 0.1
  done
  [ -n "$broker" ] || { echo "no banner from standalone within 30 s; see $log" >&2; kill -INT "$sa"; return 1; }
  token=$(python3 -c 'import sys, tomllib; print(next(t["token"] for t in tomllib.load(open(sys.argv[1], "rb"))["token"] if t["role"] == "operator"))' "$data/tokens.toml")
  local assigned=0
  for _ in $(seq 1 300); do
    assigned=$(curl -sf "http://127.0.0.1:$metrics/metrics" | awk '/^estate_ingest_partitions_assigned /{print $2}' || true)
    [ "${assigned:-0}" -gt 0 ] 2>/dev/null && break
    sleep 0.1
  done
  [ "${assigned:-0}" -gt 0 ] 2>/dev/null || { echo "ingest held no partitions within 30 s; see $log" >&2; kill -INT "$sa"; return 1; }
  # shellcheck disable=SC2086
  "$bin" loadgen --capacity --brokers "$broker" --query-url "http://127.0.0.1:$http" --token "$token" \
    --ingest-metrics "http://127.0.0.1:$metrics/metrics" \
    --start-rate 10000 --step-rate 10000 --max-rate 120000 --step-duration 30s --slo 2s \
    --duplicates 0 --malformed 0 --mirror-pairs 0 --tenants 12 \
    --out "$out_dir/$tag.json" --chart "$out_dir/$tag.svg" ${CAPACITY_ARGS:-} >"$out_dir/$tag.loadgen.log" 2>&1 || true
  kill -INT "$sa"
  wait "$sa" || echo "standalone exited non-zero; see $log" >&2
  rm -rf "$data"
  python3 - "$out_dir/$tag.json" "$bin" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
steps = " ".join(
    f"{s['offered_rate']/1000:.0f}k:{(s['latency_p50_ms'] or float('nan')):.0f}/{(s['latency_p99_ms'] or float('nan')):.0f}{'' if s['sustained'] else '!'}"
    for s in r["steps"])
print(f"{sys.argv[2]}\tmax_sustained={r['max_sustained_rate']}\t{steps}")
EOF
}

for run in $(seq 1 "$runs"); do
  i=0
  for bin in "$@"; do
    i=$((i + 1))
    one_run "$bin" "run$run-bin$i"
  done
done
