#!/usr/bin/env python3
"""Renders `estate scenario --report FILE` (JSON lines) as the Markdown
tables of docs/reliability.md: one row per scenario, then its faults."""
import json
import sys


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    print("| scenario | faults injected | events offered | stored | rejected (DLQ) | lost | duplicated | max delay | result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rej = sum(r["rejected"].values())
        print(f"| `{r['scenario']}` | {len(r['faults'])} | {r['offered_events']:,} | {r['stored']:,} | {rej:,} "
              f"| {r['lost']} | {r['duplicated']} | {r['max_delay_s']:.1f} s | {'passed' if r['passed'] else 'FAILED'} |")
    for r in rows:
        print(f"\n**`{r['scenario']}`** — `{r['command']}`, {r['duration_s']} s of load.\n")
        if r["faults"]:
            print("- Faults: " + "; ".join(r["faults"]) + ".")
        if r["rejected"]:
            print("- Rejected by reason: " + ", ".join(f"`{k}` {v}" for k, v in sorted(r["rejected"].items())) + ".")
        print("- Per poller: " + "; ".join(f"`{p}` max delay {x['max_delay_s']:.1f} s, max spool depth {x['max_spool_depth']}"
                                         for p, x in sorted(r["pollers"].items())) + ".")
        if r.get("queries"):
            q = r["queries"]
            print(f"- Queries: {q['ok']:,} answered, {q['limited']} refused by limits, {q['failed']} failed, "
                  f"{q['breaches']} isolation breaches; slowest {q['max_ms']:,} ms.")
        print("- RSS (first → last, slope over the second half): " + "; ".join(
            f"{p} {a:.0f} → {b:.0f} MiB ({s:+.1f} MiB/min)" for p, a, b, s in r["rss"]) + ".")
        for u in r["unexpected_exits"]:
            print(f"- Unexpected exit: {u}")
        for m in r["mismatches"]:
            print(f"- MISMATCH: {m}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "scenarios.jsonl")
