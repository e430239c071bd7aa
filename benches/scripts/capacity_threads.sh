#!/usr/bin/env bash
# One fixed-rate capacity step against a fresh `estate standalone`, with the
# CPU of each thread of the standalone and of the generator over 20 s in the
# middle of the step (from /proc/<pid>/task/*/stat), to see which thread
# limits the rate.
#
#   BIN=target/release/estate RATE=50000 DUR=40s OUT=./threads benches/scripts/capacity_threads.sh
#
# Extra flags: SA_ARGS for the standalone, LG_ARGS for `loadgen --capacity`.
# Prints cores per thread (those above 0.02), the totals, and loadgen's summary.
set -euo pipefail
bin=${BIN:-target/release/estate}; rate=${RATE:-50000}; out=${OUT:-threads}; dur=${DUR:-40s}
mkdir -p "$out"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data=$(mktemp -d /tmp/estate-fx.XXXXXX); http=$(free_port); flight=$(free_port); metrics=$(free_port)
$bin standalone --data-dir $data --http-addr 127.0.0.1:$http --flight-addr 127.0.0.1:$flight --metrics-addr 127.0.0.1:$metrics ${SA_ARGS:-} > $out/sa.log 2>&1 &
sa=$!
for _ in $(seq 1 300); do broker=$(sed -n 's/^  broker *\([0-9.:]*\) .*/\1/p' $out/sa.log | head -1); [ -n "$broker" ] && break; sleep 0.1; done
token=$(python3 -c 'import sys, tomllib; print(next(t["token"] for t in tomllib.load(open(sys.argv[1], "rb"))["token"] if t["role"] == "operator"))' $data/tokens.toml)
for _ in $(seq 1 300); do a=$(curl -sf http://127.0.0.1:$metrics/metrics | awk '/^estate_ingest_partitions_assigned /{print $2}' || true); [ "${a:-0}" -gt 0 ] 2>/dev/null && break; sleep 0.1; done
$bin loadgen --capacity --brokers $broker --query-url http://127.0.0.1:$http --token $token --ingest-metrics http://127.0.0.1:$metrics/metrics \
  --start-rate $rate --step-rate 10000 --max-rate $rate --step-duration $dur --slo 2s --duplicates 0 --malformed 0 --mirror-pairs 0 --tenants 12 \
  --out $out/cap.json --chart $out/cap.svg ${LG_ARGS:-} > $out/loadgen.log 2>&1 &
lg=$!
sleep 12
snap() { for p in $sa $lg; do for t in /proc/$p/task/*; do echo "$p $(cat $t/comm | tr ' ' _) $(awk '{print $14+$15}' $t/stat)"; done; done; }
snap > $out/cpu0; sleep 20; snap > $out/cpu1
wait $lg || true
kill -INT $sa; wait $sa || true; rm -rf $data
python3 - $out $sa $lg <<'PY'
import sys, collections
out, sa, lg = sys.argv[1:]
def load(f):
    d = collections.Counter()
    for line in open(f):
        p, c, v = line.split(); d[(p, c)] += int(v)
    return d
a, b = load(out + '/cpu0'), load(out + '/cpu1')
tot = collections.Counter()
for k in b:
    cores = (b[k] - a.get(k, 0)) / 100 / 20
    tot[k[0]] += cores
    if cores > 0.02: print(f"{'standalone' if k[0]==sa else 'loadgen':10} {k[1]:20} {cores:.2f} cores")
print(f"standalone total {tot[sa]:.2f} cores; loadgen total {tot[lg]:.2f} cores")
PY
grep -E "offered|sustained|p99" $out/loadgen.log | tail -5
