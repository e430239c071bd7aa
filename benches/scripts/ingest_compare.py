#!/usr/bin/env python3
"""JSON to Parquet, one thread each: estate's ingest pipeline against DuckDB.

Generates the NMIS mix as NDJSON (estate-ingest-bench generate), converts it
with estate-ingest-bench convert (decode, validate, dedup by event_id, Arrow,
Parquet with ingest's writer settings) and with DuckDB's
COPY (SELECT * FROM read_json(...)) TO ... (FORMAT parquet, COMPRESSION zstd)
under SET threads = 1, and prints events/s, bytes stored per event and the
ratios, plus estate's peak RSS with every key of the file held in its dedup
window. Runs of each tool alternate; the best of --runs is reported.

Needs: cargo build --release --bin estate-ingest-bench (with --bin estate is
fine) and the venv from scripts/install-test-deps.sh (duckdb from PyPI).

  benches/scripts/ingest_compare.py [--events 1000000] [--runs 3] [--out F.json]
"""
import argparse, json, os, subprocess, sys, tempfile, time

import duckdb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release", "estate-ingest-bench")


def estate_run(ndjson, out):
    r = subprocess.run([BIN, "convert", "--input", ndjson, "--out", out], check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def duckdb_run(ndjson, out):
    con = duckdb.connect()
    con.execute("SET threads = 1")
    t = time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_json('{ndjson}', format = 'newline_delimited')) "
        f"TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
    )
    secs = time.perf_counter() - t
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
    con.close()
    return {"seconds": secs, "rows": rows, "parquet_bytes": os.path.getsize(out)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: run `cargo build --release --bin estate-ingest-bench` first")
    with tempfile.TemporaryDirectory() as d:
        ndjson = os.path.join(d, "events.ndjson")
        subprocess.run([BIN, "generate", "--events", str(a.events), "--out", ndjson], check=True)
        raw = os.path.getsize(ndjson)
        ours, theirs = [], []
        for i in range(a.runs):
            ours.append(estate_run(ndjson, os.path.join(d, f"estate-{i}.parquet")))
            theirs.append(duckdb_run(ndjson, os.path.join(d, f"duckdb-{i}.parquet")))
            print(f"run {i + 1}: estate {ours[-1]['seconds']:.2f} s, duckdb {theirs[-1]['seconds']:.2f} s", file=sys.stderr)
    best_o = min(ours, key=lambda r: r["seconds"])
    best_d = min(theirs, key=lambda r: r["seconds"])
    n = best_o["messages"]
    e_rate = n / best_o["seconds"]
    d_rate = n / best_d["seconds"]
    res = {
        "messages": n,
        "json_bytes": raw,
        "json_bytes_per_message": raw / n,
        "estate": {**best_o, "messages_per_s": e_rate, "bytes_per_stored_event": best_o["parquet_bytes"] / best_o["events_stored"]},
        "duckdb": {**best_d, "messages_per_s": d_rate, "bytes_per_row": best_d["parquet_bytes"] / best_d["rows"]},
        "speed_ratio_estate_over_duckdb": e_rate / d_rate,
        "size_ratio_estate_over_duckdb": best_o["parquet_bytes"] / best_d["parquet_bytes"],
        "json_over_estate_parquet": raw / best_o["parquet_bytes"],
        "json_over_duckdb_parquet": raw / best_d["parquet_bytes"],
    }
    print(f"{'':24}{'estate':>14}{'duckdb':>14}")
    print(f"{'messages/s (1 thread)':24}{e_rate:>14,.0f}{d_rate:>14,.0f}   ratio {e_rate / d_rate:.2f}x")
    print(f"{'parquet bytes':24}{best_o['parquet_bytes']:>14,}{best_d['parquet_bytes']:>14,}   ratio {res['size_ratio_estate_over_duckdb']:.2f}")
    print(f"{'raw JSON / parquet':24}{res['json_over_estate_parquet']:>14.1f}{res['json_over_duckdb_parquet']:>14.1f}")
    print(f"{'rows':24}{best_o['events_stored']:>14,}{best_d['rows']:>14,}   (estate drops {best_o['duplicates']:,} duplicates)")
    rss = best_o.get("peak_rss_bytes") or 0
    print(f"estate peak RSS {rss / 2**20:.0f} MiB with {best_o['dedup_keys']:,} dedup keys held")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
