#!/usr/bin/env python3
"""Run the eight standard queries on estate (HTTP API) and on DuckDB over the
same Delta tables (read through the `deltalake` package's Arrow datasets).

  check: compare the answers, print a table, exit 1 on any mismatch.
  bench: time each query, p50/p95 of N hot runs after one warm-up, on both
         engines with the same thread count; also 10 concurrent clients.

The views (`nodes`, `active_events`, `pollers`, `loss_audit`) are defined in
DuckDB with the very SQL estate uses, read from estate's
information_schema.views, so both engines answer the same question (one
spelling differs: DataFusion's ordered aggregate first_value is DuckDB's first).
"""
import argparse, concurrent.futures, io, json, os, re, statistics, sys, time, urllib.error, urllib.request

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.compute as pc
from deltalake import DeltaTable

ARROW = "application/vnd.apache.arrow.stream"
TABLES = {"events": "events", "nodes": "node_snapshots", "heartbeats": "heartbeats", "receipts": "receipts"}
VIEW_ORDER = ["nodes", "active_events", "pollers", "loss_audit"]


def post(url, token, sql, accept=ARROW):
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/sql",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Authorization": f"Bearer {token}", "Accept": accept, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        # The body says why (the SQL error, the limit hit); without it a
        # failing check only shows "400 Bad Request".
        sys.exit(f"estate answered {e.code} to\n{sql}\n{e.read().decode(errors='replace')}")


def estate_table(url, token, sql):
    return ipc.open_stream(io.BytesIO(post(url, token, sql))).read_all()


def duck(store, threads, url, token):
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    for table, name in TABLES.items():
        path = os.path.join(store, table)
        if os.path.isdir(os.path.join(path, "_delta_log")):
            con.register(name, DeltaTable(path).to_pyarrow_dataset())
    con.execute("CREATE MACRO to_unixtime(x) AS epoch(x)")
    views = json.loads(post(url, token, "SELECT table_name, definition FROM information_schema.views", "application/json"))
    defs = {v["table_name"]: v["definition"] for v in views}
    for name in VIEW_ORDER:
        # DataFusion's ordered aggregate `first_value(x ORDER BY …)` is
        # DuckDB's `first(x ORDER BY …)`; DuckDB's first_value is a window
        # function only.
        sql = re.sub(r"\bfirst_value\(", "first(", defs[name])
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con


def normalise(t):
    """Comparable rows: dictionaries decoded, timestamps as UTC microseconds,
    integers as int64, floats rounded."""
    cols = []
    for i, f in enumerate(t.schema):
        c = t.column(i)
        ty = f.type
        if pa.types.is_dictionary(ty):
            c = c.cast(ty.value_type)
            ty = ty.value_type
        if pa.types.is_timestamp(ty):
            c = c.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        elif pa.types.is_integer(ty):
            c = c.cast(pa.int64())
        elif pa.types.is_floating(ty):
            c = pc.round(c.cast(pa.float64()), 6)
        elif pa.types.is_string(ty) or pa.types.is_large_string(ty) or str(ty) == "string_view":
            c = c.cast(pa.string())
        cols.append(c.to_pylist())
    return [tuple(r) for r in zip(*cols)] if cols else []


def queries(d):
    for f in sorted(os.listdir(d)):
        if f.endswith(".sql"):
            yield f[:-4], open(os.path.join(d, f)).read()


def check(a):
    con = duck(a.store, a.threads, a.url, a.token)
    bad = 0
    print(f"{'query':36} {'estate rows':>11} {'duckdb rows':>11}  result")
    for name, sql in queries(a.queries):
        ours = normalise(estate_table(a.url, a.token, sql))
        theirs = normalise(con.sql(sql).to_arrow_table())
        same = ours == theirs or sorted(map(repr, ours)) == sorted(map(repr, theirs))
        bad += not same
        print(f"{name:36} {len(ours):>11} {len(theirs):>11}  {'same' if same else 'DIFFERENT'}")
        if not same:
            print("  estate:", ours[:5], "\n  duckdb:", theirs[:5])
        if len(ours) == 0:
            print(f"  {name}: empty answer; the data set must exercise every query")
            bad += 1
    sys.exit(1 if bad else 0)


def timed(f, runs):
    f()  # warm-up
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return statistics.median(ts), ts[min(len(ts) - 1, int(round(0.95 * (len(ts) - 1))))]


def bench(a):
    con = duck(a.store, a.threads, a.url, a.token)
    results = []
    print(f"{'query':36} {'estate p50':>10} {'p95':>8} {'duckdb p50':>10} {'p95':>8} {'ratio':>6}")
    for name, sql in queries(a.queries):
        e50, e95 = timed(lambda: post(a.url, a.token, sql), a.runs)
        d50, d95 = timed(lambda: con.sql(sql).to_arrow_table(), a.runs)
        results.append({"query": name, "estate_p50": e50, "estate_p95": e95, "duckdb_p50": d50, "duckdb_p95": d95})
        print(f"{name:36} {e50*1000:>9.1f}ms {e95*1000:>7.1f}ms {d50*1000:>9.1f}ms {d95*1000:>7.1f}ms {e50/d50:>6.2f}")
    wins = sum(r["estate_p50"] <= r["duckdb_p50"] for r in results)
    print(f"estate p50 <= DuckDB p50 on {wins} of {len(results)} queries")
    # 10 clients at once, each running every query once.
    sqls = [sql for _, sql in queries(a.queries)]
    lat = []

    def client():
        out = []
        for sql in sqls:
            t = time.perf_counter()
            post(a.url, a.token, sql)
            out.append(time.perf_counter() - t)
        return out

    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        for r in ex.map(lambda _: client(), range(10)):
            lat.extend(r)
    print(f"10 concurrent clients: p50 {statistics.median(lat)*1000:.1f}ms over {len(lat)} queries")
    if a.tenant_token:
        before = metric(a.url, "estate_query_files_pruned_total")
        post(a.url, a.tenant_token, "SELECT count(*) FROM events WHERE time >= now() - INTERVAL '1 hour'")
        after = metric(a.url, "estate_query_files_pruned_total")
        print(f"one-tenant query (last hour): files pruned {after - before:.0f}")
    if a.out:
        json.dump({"queries": results, "concurrent_p50": statistics.median(lat)}, open(a.out, "w"), indent=2)


def metric(url, name):
    text = urllib.request.urlopen(url.rstrip("/") + "/metrics").read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["check", "bench"])
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True, help="an operator token")
    p.add_argument("--tenant-token", help="a tenant token, for the files-pruned figure")
    p.add_argument("--store", required=True, help="the store directory")
    p.add_argument("--queries", default=os.path.join(os.path.dirname(__file__), "..", "..", "query", "queries"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()
    check(a) if a.mode == "check" else bench(a)
