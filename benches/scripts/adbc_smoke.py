#!/usr/bin/env python3
"""Connects to estate's Flight SQL port with the ADBC Flight SQL driver (the
Go driver that ADBC ships) and checks a query, the metadata call and the
server info. Exit 0 on success.

  adbc_smoke.py grpc://127.0.0.1:50051 TOKEN EXPECTED_EVENTS
"""
import sys

import adbc_driver_flightsql.dbapi as flightsql
from adbc_driver_flightsql import DatabaseOptions

uri, token, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = flightsql.connect(uri, db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}, autocommit=True)
cur = conn.cursor()
cur.execute("SELECT count(*) AS n FROM events")
(n,) = cur.fetchone()
assert n == expected, f"count(*) = {n}, expected {expected}"
info = conn.adbc_get_info()
assert info["vendor_name"] == "estate", info
objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
tables = sorted(t["table_name"] for c in objects for s in c["catalog_db_schemas"] if s["db_schema_name"] == "public" for t in s["db_schema_tables"])
assert "events" in tables and "loss_audit" in tables, tables
print("adbc ok:", n, "events;", len(tables), "tables in public")
