#!/usr/bin/env bash
# End to end on a real broker process: `estate ingest` against the ceiling of
# a plain rdkafka consumer that only counts, on the same tansu broker and the
# same pre-filled topic (the NMIS mix, 6 partitions).
#   - ceiling: estate-ingest-bench count (from offset 0 until all N are seen);
#   - estate:  estate ingest (one instance, the deduplicated stream off: tansu
#     accepts it at ~1k records/s) until its events_in counter, published
#     after each commit, reaches N, i.e. every message is committed to the
#     Delta tables.
# Both are timed from their start, so both include the group join and
# tansu's first fetch (about 4 s here); estate also includes its last flush
# interval (1 s).
# Needs: cargo build --release --bin estate --bin estate-ingest-bench, and
# tansu (scripts/install-test-deps.sh).
#
#   benches/scripts/ingest_e2e.sh [EVENTS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
RUNS=${2:-3}
IPID=""
cleanup() {
  # ingest first (it leaves the group through the broker), then the broker
  [ -n "$IPID" ] && { kill "$IPID" 2>/dev/null; wait "$IPID" 2>/dev/null || true; }
  tansu_cleanup
}
trap cleanup EXIT
. benches/scripts/tansu_env.sh
for t in estate.events:6 estate.dlq:1 estate.deduped:2; do
  "$TANSU" topic create --broker "tcp://127.0.0.1:$PORT" --partitions "${t#*:}" "${t%%:*}" >/dev/null
done
"$BENCH" fill --brokers "127.0.0.1:$PORT" --events "$N" >/dev/null
# tansu's speed varies from run to run by more than the difference being
# measured, so the two sides alternate, RUNS times, each in a new consumer
# group (and estate into a new store); the median ratio is reported.
RATIOS=()
for RUN in $(seq "$RUNS"); do
  CEIL=$("$BENCH" count --brokers "127.0.0.1:$PORT" --events "$N")
  START=$(date +%s.%N)
  "$ESTATE" ingest --brokers "127.0.0.1:$PORT" --group "estate-e2e-$RUN" --store "$DIR/store-$RUN" \
    --metrics-addr "127.0.0.1:$MPORT" --deduped-topic "" --log warn 2>"$DIR/ingest-$RUN.log" &
  IPID=$!
  while :; do
    IN=$(curl -sf "http://127.0.0.1:$MPORT/metrics" | awk '/^estate_ingest_events_in_total/ {s += $2} END {print s + 0}') || IN=0
    [ "${IN%.*}" -ge "$N" ] && break
    kill -0 "$IPID" 2>/dev/null || { echo "estate ingest exited; its log:" >&2; cat "$DIR/ingest-$RUN.log" >&2; exit 1; }
    sleep 0.2
  done
  END=$(date +%s.%N)
  RSS=$(awk '/VmHWM/ {print $2}' "/proc/$IPID/status")
  kill "$IPID"; wait "$IPID" 2>/dev/null || true; IPID=""
  RATIOS+=("$(python3 - "$CEIL" "$START" "$END" "$N" "$RSS" "$RUN" <<'PY'
import json, sys
ceil = json.loads(sys.argv[1]); start, end, n, rss, run = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
rate = n / (end - start)
ratio = rate / ceil['messages_per_s']
print(f"run {run}: counting consumer {ceil['messages_per_s']:,.0f} msg/s (first message after {ceil['first_message_s']:.1f} s); "
      f"estate ingest {rate:,.0f} msg/s, {n} committed in {end - start:.1f} s, peak RSS {rss / 1024:.0f} MiB; ratio {ratio:.2f}", file=sys.stderr)
print(f"{ratio:.3f}")
PY
)")
done
median_ratio "estate / counting consumer" "${RATIOS[@]}"
