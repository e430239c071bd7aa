#!/usr/bin/env bash
# Cold start of `estate query` on a store: seconds from process start until
# /healthz answers with the `events` table at the expected version. Prints
# one JSON line.
#   benches/scripts/table_load.sh STORE EXPECTED_EVENTS_VERSION [ESTATE_BIN]
set -euo pipefail
STORE=$1; WANT=$2; ESTATE=${3:-target/release/estate}
PORT=$((20000 + RANDOM % 20000))
TOK=$(mktemp); trap 'rm -f "$TOK"; [ -n "${QP:-}" ] && kill "$QP" 2>/dev/null || true' EXIT
printf '[[token]]\ntoken = "load-bench-operator"\nrole = "operator"\n' >"$TOK"
START=$(date +%s.%N)
"$ESTATE" query --store "$STORE" --http-addr "127.0.0.1:$PORT" --flight-addr "127.0.0.1:$((PORT + 1))" \
  --auth-file "$TOK" --log warn 2>/dev/null &
QP=$!
while :; do
  BODY=$(curl -sf "http://127.0.0.1:$PORT/healthz" 2>/dev/null) && break
  kill -0 "$QP" 2>/dev/null || { echo "estate query exited" >&2; exit 1; }
  sleep 0.02
done
END=$(date +%s.%N)
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$QP/status")
python3 - "$BODY" "$START" "$END" "$WANT" "$RSS" <<'PY'
import json, sys
body = json.loads(sys.argv[1]); start, end, want, rss = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ev = body["tables"]["events"]
if ev is None or ev["version"] != want:
    sys.exit(f"events table at {ev}, expected version {want}")
print(json.dumps({"seconds": round(end - start, 3), "events_version": ev["version"], "events_files": ev["files"], "peak_rss_mib": rss // 1024}))
PY
