#!/usr/bin/env python3
"""Per-commit timings of one ingest table, from ingest's debug log.

    ESTATE_LOG=info,estate_ingest::table=debug estate standalone ... 2> log
    benches/scripts/commit_timings.py LOG [--table events] [--bucket 50]

Reads the "fenced commit" lines that `DeltaSink::commit_fenced` writes (one
per commit, with the time of each phase) and prints, per bucket of
consecutive commits, the mean of each phase and of their sum, in ms. The
phases are named as the binary that wrote the log names them (`refresh` or
`read`, `check`, `write`, `commit`), so logs of older and newer binaries can
be compared side by side.
"""
import argparse
import re
import sys

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1000.0}
FIELD = re.compile(r"(\w+)=([0-9.]+)(ns|µs|us|ms|s)\b")
TABLE = re.compile(r'table="?(\w+)"?')
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def commits(path, table):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = ANSI.sub("", line)
            if "fenced commit" not in line:
                continue
            t = TABLE.search(line)
            if not t or t.group(1) != table:
                continue
            yield {k: float(v) * UNITS[u] for k, v, u in FIELD.findall(line)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--table", default="events")
    ap.add_argument("--bucket", type=int, default=50)
    a = ap.parse_args()
    rows = list(commits(a.log, a.table))
    if not rows:
        sys.exit(f"no 'fenced commit' lines for table {a.table} in {a.log} (was ESTATE_LOG=info,estate_ingest::table=debug set?)")
    phases = [p for p in ("refresh", "read", "check", "write", "commit") if any(p in r for r in rows)]
    print(f"{a.log}: {len(rows)} commits of {a.table}; mean ms per commit")
    print("commits".ljust(12) + "".join(p.rjust(10) for p in phases) + "total".rjust(10) + "max total".rjust(11))
    for start in range(0, len(rows), a.bucket):
        chunk = rows[start:start + a.bucket]
        means = [sum(r.get(p, 0.0) for r in chunk) / len(chunk) for p in phases]
        totals = [sum(r.get(p, 0.0) for p in phases) for r in chunk]
        label = f"{start + 1}-{start + len(chunk)}"
        print(label.ljust(12) + "".join(f"{m:10.1f}" for m in means) + f"{sum(totals) / len(totals):10.1f}" + f"{max(totals):11.1f}")


if __name__ == "__main__":
    main()
