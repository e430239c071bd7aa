#!/usr/bin/env bash
# Poller forwarding against a plain rdkafka producer, on the same tansu broker
# process, with the same messages.
#   - baseline: estate-ingest-bench fill --input --poller-headers
#     (idempotent, acks=all, lz4, linger 20 ms; every line keyed by the one
#     tenant and carrying the agent's three headers, so the records are the
#     agent's), timed from its start until every message is acknowledged;
#   - for reference, the same producer without the headers (tansu was 2.8x
#     slower with record headers than without here);
#   - estate:   estate poller --json-lines - <FILE (stream mode, spool fsync
#     `always`, the shipped defaults), timed from its start until it exits,
#     which it does once its input has ended and its spool is drained, i.e.
#     every event is spooled, fsync'd, sent and acknowledged.
# The three alternate RUNS times, each into its own topic; the median ratio is
# reported. Needs: cargo build --release --bin estate --bin estate-ingest-bench,
# and tansu (scripts/install-test-deps.sh).
#
#   benches/scripts/poller_forward.sh [EVENTS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
RUNS=${2:-3}
trap 'tansu_cleanup' EXIT
. benches/scripts/tansu_env.sh
"$BENCH" generate --events "$N" --out "$DIR/events.ndjson" 2>/dev/null
RATIOS=()
for RUN in $(seq "$RUNS"); do
  for t in "bare-$RUN" "plain-$RUN" "poller-$RUN"; do
    "$TANSU" topic create --broker "tcp://127.0.0.1:$PORT" --partitions 6 "$t" >/dev/null
  done
  BARE=$("$BENCH" fill --brokers "127.0.0.1:$PORT" --topic "bare-$RUN" --input "$DIR/events.ndjson" --key t1 2>/dev/null)
  BASE=$("$BENCH" fill --brokers "127.0.0.1:$PORT" --topic "plain-$RUN" --input "$DIR/events.ndjson" --key t1 --poller-headers 2>/dev/null)
  START=$(date +%s.%N)
  "$ESTATE" poller --brokers "127.0.0.1:$PORT" --tenant t1 --poller-id "bench-$RUN" --spool-dir "$DIR/spool-$RUN" \
    --json-lines - --topic "poller-$RUN" --heartbeat-interval 1h --drain-timeout 10m \
    --metrics-addr "127.0.0.1:$MPORT" --log warn <"$DIR/events.ndjson" 2>"$DIR/poller-$RUN.log" \
    || { echo "estate poller failed; its log:" >&2; cat "$DIR/poller-$RUN.log" >&2; exit 1; }
  END=$(date +%s.%N)
  RATIOS+=("$(python3 - "$BASE" "$BARE" "$START" "$END" "$N" "$RUN" <<'PY'
import json, sys
base, bare = json.loads(sys.argv[1]), json.loads(sys.argv[2]); start, end, n, run = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rate = n / (end - start)
ratio = rate / base['messages_per_s']
print(f"run {run}: plain producer {base['messages_per_s']:,.0f} msg/s (without headers {bare['messages_per_s']:,.0f}); "
      f"estate poller {rate:,.0f} msg/s ({n} in {end - start:.1f} s); ratio {ratio:.2f} "
      f"(vs no headers {rate / bare['messages_per_s']:.2f})", file=sys.stderr)
print(f"{ratio:.3f}")
PY
)")
done
median_ratio "estate poller / plain producer" "${RATIOS[@]}"
