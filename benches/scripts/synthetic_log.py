#!/usr/bin/env python3
"""Extends a real estate `events` table's Delta log with N synthetic ingest
commits, to measure how long the query service takes to load a table after
very many commits (issue 7: cold start after 100k commits).

Each synthetic commit copies the shape of one real ingest commit found in the
log: its commitInfo, one of its `add` actions (same partition values and
stats, a new unique file path) and a `txn` for one partition with the next
offset. The data files named by the synthetic adds are not written: loading
a table replays the log and never opens data files, so what is measured is
log replay; do not query such a table.

    synthetic_log.py STORE N
"""
import json
import os
import sys
import uuid

store, n = sys.argv[1], int(sys.argv[2])
log = os.path.join(store, "events", "_delta_log")
versions = sorted(int(f[:20]) for f in os.listdir(log) if f.endswith(".json") and f[:20].isdigit())
last = versions[-1]
template = None
for v in reversed(versions):
    with open(os.path.join(log, f"{v:020d}.json")) as f:
        actions = [json.loads(line) for line in f if line.strip()]
    adds = [a["add"] for a in actions if "add" in a]
    txns = [a["txn"] for a in actions if "txn" in a]
    info = next((a["commitInfo"] for a in actions if "commitInfo" in a), None)
    if adds and txns and info:
        template = (info, adds[0], txns[0])
        break
if template is None:
    sys.exit(f"no ingest commit (commitInfo + add + txn) found in {log}")
info, add, txn = template
offset = int(txn["version"])
ts = int(info["timestamp"])
for i in range(1, n + 1):
    v = last + i
    offset += 500
    ts += 1000
    a = dict(add)
    a["path"] = f"{os.path.dirname(add['path'])}/part-00000-{uuid.uuid4()}-c000.zstd.parquet"
    a["modificationTime"] = ts
    c = dict(info)
    c["timestamp"] = ts
    t = dict(txn)
    t["version"] = offset
    t["lastUpdated"] = ts
    with open(os.path.join(log, f"{v:020d}.json"), "w") as f:
        f.write(json.dumps({"commitInfo": c}) + "\n" + json.dumps({"txn": t}) + "\n" + json.dumps({"add": a}) + "\n")
print(json.dumps({"first_version": last + 1, "last_version": last + n, "commits": n}))
