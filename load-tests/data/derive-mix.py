#!/usr/bin/env python3
"""Derives event-mix.json (the load generator's event mix) from the NMIS 9
event catalogue ../../../shared/data/nmis-events.json.

Rules: relative_frequency high/medium/low -> weight 10/4/1; events not in
NMIS 9 core (raised_by 'none ...' or in_events_table false) get weight 0.5;
per-role levels kept; a plain level applies to every role; 'threshold:<x>'
and 'by value' use the threshold ladder (Warning..Fatal) with falling odds;
unknown (null) levels use Warning. Clears use clear_logged_as, else
clears_with, and are logged at Normal with ' Time=HH:MM:SS' appended.
Usage: derive-mix.py [SRC] > event-mix.json
"""
import json, sys

src = sys.argv[1] if len(sys.argv) > 1 else "../../../shared/data/nmis-events.json"
d = json.load(open(src))
W = {"high": 10, "medium": 4, "low": 1}
ELEMENTS = {
    "ifDescr": ["GigabitEthernet0/1", "GigabitEthernet0/2", "TenGigabitEthernet1/0/1", "Port-channel1", "Vlan100", "ge-0/0/3"],
    "service name": ["http", "dns", "ssh", "snmpd"],
    "storage description": ["/", "/var", "C:\\"],
    "hrStorageDescr": ["/", "/var", "Physical memory"],
}
out = []
for e in d["events"]:
    if e.get("kind") == "system":
        continue
    lv = e.get("levels")
    roles = d["roles"]
    if isinstance(lv, dict):
        levels = {r: lv[r] for r in roles}
        ladder = False
    elif isinstance(lv, str) and (lv.startswith("threshold:") or lv == "by value"):
        levels, ladder = None, True
    else:
        levels, ladder = {r: (lv or "Warning") for r in roles}, False
    weight = W.get(e.get("relative_frequency"), 1)
    if str(e.get("raised_by", "")).startswith("none") or e.get("in_events_table") is False:
        weight = 0.5
    el = e.get("element") or ""
    elements = e.get("element_examples") or ELEMENTS.get(el) or ([] if el == "" else [f"{el.split(' ')[0]}-{i}" for i in range(1, 5)])
    if el.startswith("''"):
        elements = [""] + elements
    clear = None
    if e.get("stateful"):
        clear = e.get("clear_logged_as") or e.get("clears_with")
    out.append({
        "name": e.get("raised_as") or e["name"],
        "clear": clear,
        "kind": e["kind"],
        "weight": weight,
        "levels": levels,
        "ladder": ladder,
        "elements": elements,
        "details": [x for x in e.get("details_examples", [])] or [""],
        "clear_details": [x.rsplit(" Time=", 1)[0] for x in e.get("clear_details_examples", [])],
    })
mix = {
    "about": "Event mix for estate loadgen, derived by derive-mix.py from NMIS 9's event catalogue (shared/data/nmis-events.json).",
    "roles": {"core": 0.1, "distribution": 0.3, "access": 0.6},
    "ladder": {"order": d["threshold_ladders"]["order"], "odds": [0.5, 0.25, 0.15, 0.07, 0.03]},
    "flap_probability": 0.1,
    "node_snapshot_every": 50,
    "events": out,
}
json.dump(mix, sys.stdout, indent=1)
print()
