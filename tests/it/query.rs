//! `estate query` over real sockets: HTTP formats and statuses, Flight SQL,
//! tenant isolation, limits and live visibility of new commits. The tables
//! are written with ingest's own Delta sink and the schemas crate's builders.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{Array, RecordBatch};
use deltalake::arrow::ipc::reader::StreamReader;
use estate_ingest::{DeltaSink, Store, TableKind};
use estate_schemas::{
    DecodeContext, EventsBuilder, HeartbeatsBuilder, NodesBuilder, ReceiptRow, ReceiptsBuilder, Record, Source,
};

use crate::harness::{self, free_port, now_ms};

pub const ACME: &str = "acme-token-1";
pub const BETA: &str = "beta-token-1";
pub const NOC: &str = "noc-token-01";

/// Strings that exist only in other tenants' data or paths: none may reach an `acme` session.
const FOREIGN: [&str; 4] = ["tenant=beta", "tenant=globex", "beta-private", "globex-private"];

/// Wire messages for one tenant: events, node snapshots and heartbeats.
pub fn tenant_messages(tenant: &str, now: i64) -> Vec<String> {
    let private = format!("{tenant}-private");
    let mut out = Vec::new();
    for p in 1..=2 {
        let poller = format!("{tenant}-p{p}");
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            seq
        };
        for n in 0..5 {
            let node = format!("{tenant}-node-{n}");
            let t0 = now - 3_600_000 + (n as i64) * 60_000 + p as i64;
            let ev = |seq: i64, t: i64, event: &str, level: &str, state: &str, element: &str| {
                let state = if state.is_empty() { String::new() } else { format!(r#","state":"{state}""#) };
                format!(
                    r#"{{"v":1,"type":"event","tenant":"{tenant}","poller":"{poller}","epoch":1,"seq":{seq},"time":{t},"node":"{node}","event":"{event}","element":"{element}","level":"{level}"{state},"details":"{private} detail"}}"#
                )
            };
            out.push(ev(next(), t0, "Node Down", "Critical", "down", ""));
            out.push(ev(next(), t0 + 1_000, "Node Up", "Normal", "up", ""));
            out.push(ev(next(), t0 + 2_000, "Interface Down", "Major", "down", "Gi0/1"));
            if n % 2 == 0 {
                out.push(ev(next(), t0 + 3_000, "Interface Up", "Normal", "up", "Gi0/1"));
            }
            if n == 1 {
                out.push(ev(next(), t0 + 4_000, "Node Down", "Fatal", "down", ""));
            }
            out.push(ev(next(), t0 + 5_000, "Node Reset", "Warning", "", ""));
            let s = next();
            out.push(format!(
                r#"{{"v":1,"type":"node","tenant":"{tenant}","poller":"{poller}","epoch":1,"seq":{s},"time":{t0},"node":"{node}","level":"Minor","attrs":{{"model":"{private}"}}}}"#
            ));
        }
        let s = next();
        out.push(format!(
            r#"{{"v":1,"type":"heartbeat","tenant":"{tenant}","poller":"{poller}","epoch":1,"seq":{s},"time":{now},"spool_depth":0}}"#
        ));
    }
    out
}

/// Decodes `messages` as ingest does and commits them to the four tables.
pub fn commit(store_dir: &Path, tenant: &str, messages: &[String], receipts: Vec<ReceiptRow>) {
    commit_at(store_dir, tenant, messages, receipts, now_ms());
}

/// [`commit`] as if ingest ran at `now` (which dates the receipts rows).
pub fn commit_at(store_dir: &Path, tenant: &str, messages: &[String], receipts: Vec<ReceiptRow>, now: i64) {
    let msgs: Vec<(&str, &str)> = messages.iter().map(|m| (tenant, m.as_str())).collect();
    commit_multi(store_dir, &msgs, receipts, now);
}

/// One commit per table of `(tenant, message)` pairs, decoded as ingest does.
pub fn commit_multi(store_dir: &Path, messages: &[(&str, &str)], receipts: Vec<ReceiptRow>, now: i64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(store_dir.to_str().unwrap(), Default::default(), None).unwrap();
        let (mut ev, mut nodes, mut hb) = (EventsBuilder::default(), NodesBuilder::default(), HeartbeatsBuilder::default());
        let mut rec = ReceiptsBuilder::default();
        for (i, (tenant, m)) in messages.iter().enumerate() {
            let ctx = DecodeContext { tenant: Some(tenant), max_bytes: 1 << 20, now_ms: now, max_future_ms: 86_400_000 };
            let src = Source { topic: "estate.events", partition: 0, offset: i as i64 };
            match estate_schemas::decode(m.as_bytes(), &ctx).unwrap_or_else(|e| panic!("{m}: {e:?}")) {
                Record::Event(e) => ev.append(tenant, &e, now, src),
                Record::Node(n) => nodes.append(tenant, &n, now),
                Record::Heartbeat(h) => hb.append(tenant, &h, now),
            }
        }
        for r in receipts {
            rec.push(r);
        }
        let batches = [
            (TableKind::Events, ev.finish().unwrap()),
            (TableKind::Nodes, nodes.finish().unwrap()),
            (TableKind::Heartbeats, hb.finish().unwrap()),
            (TableKind::Receipts, rec.finish(now).unwrap()),
        ];
        for (kind, batch) in batches {
            if batch.num_rows() == 0 && kind != TableKind::Events {
                continue;
            }
            let mut sink = DeltaSink::open(&store, kind).await.unwrap();
            sink.commit_fenced(&[], &[batch]).await.unwrap();
        }
    });
}

pub fn receipt(tenant: &str, poller: &str, start: i64, end: i64) -> ReceiptRow {
    ReceiptRow {
        tenant: tenant.into(),
        poller: poller.into(),
        epoch: 1,
        seq_start: start,
        seq_end: end,
        stored: end - start + 1,
        duplicates: 0,
        rejected: 0,
    }
}

/// Three tenants. `acme-p2` has a gap (11..=14) and a lost tail against its
/// heartbeat; every other poller is complete.
pub fn write_estate(store: &Path) {
    let now = now_ms();
    for tenant in ["acme", "beta", "globex"] {
        let msgs = tenant_messages(tenant, now);
        let per_poller = msgs.len() as i64 / 2;
        let mut receipts = vec![receipt(tenant, &format!("{tenant}-p1"), 1, per_poller)];
        if tenant == "acme" {
            receipts.push(receipt(tenant, "acme-p2", 1, 10));
            receipts.push(receipt(tenant, "acme-p2", 15, per_poller - 3));
        } else {
            receipts.push(receipt(tenant, &format!("{tenant}-p2"), 1, per_poller));
        }
        commit(store, tenant, &msgs, receipts);
    }
}

pub struct QueryServer {
    child: Child,
    pub http: u16,
    pub flight: u16,
    pub store: PathBuf,
    pub auth: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl QueryServer {
    pub fn start(extra: &[&str]) -> QueryServer {
        Self::start_with(write_estate, extra)
    }

    pub fn start_with(fill: impl FnOnce(&Path), extra: &[&str]) -> QueryServer {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        fill(&store);
        let auth = dir.path().join("tokens.toml");
        std::fs::write(
            &auth,
            format!(
                "[[token]]\ntoken = \"{ACME}\"\ntenant = \"acme\"\n[[token]]\ntoken = \"{BETA}\"\ntenant = \"beta\"\n\
                 [[token]]\ntoken = \"{NOC}\"\nrole = \"operator\"\n"
            ),
        )
        .unwrap();
        let (http, flight) = (free_port(), free_port());
        let log = dir.path().join("query.log");
        let child = Command::new(env!("CARGO_BIN_EXE_estate"))
            .args(["query", "--store", store.to_str().unwrap(), "--auth-file", auth.to_str().unwrap()])
            .args(["--http-addr", &format!("127.0.0.1:{http}"), "--flight-addr", &format!("127.0.0.1:{flight}")])
            .args(["--refresh-interval", "200ms", "--query-timeout", "3s", "--max-rows", "5000"])
            .args(["--max-concurrent-per-tenant", "2", "--queue-timeout", "300ms", "--query-memory", "24MiB"])
            .args(extra)
            .env("ESTATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning estate query");
        let server = QueryServer { child, http, flight, store, auth, log, _dir: dir };
        let start = Instant::now();
        while crate::harness::http_get(http, "/healthz").is_none() {
            assert!(start.elapsed() < Duration::from_secs(30), "query service did not start:\n{}", server.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `POST /v1/sql`; returns (status, content type, body).
    pub fn post(&self, token: Option<&str>, sql: &str, accept: &str) -> (u16, String, Vec<u8>) {
        let body = serde_json::json!({ "sql": sql }).to_string();
        self.post_raw(token, &body, accept)
    }

    pub fn post_raw(&self, token: Option<&str>, body: &str, accept: &str) -> (u16, String, Vec<u8>) {
        harness::http_post(self.http, "/v1/sql", token, body, accept)
    }

    /// JSON rows of a successful query.
    pub fn rows(&self, token: &str, sql: &str) -> Vec<serde_json::Value> {
        let (status, _, body) = self.post(Some(token), sql, "application/json");
        assert_eq!(status, 200, "{sql}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Vec<serde_json::Value>>(&body).unwrap()
    }

    pub fn count(&self, token: &str, sql: &str) -> i64 {
        let rows = self.rows(token, sql);
        rows[0].as_object().unwrap().values().next().unwrap().as_i64().unwrap()
    }
}

impl Drop for QueryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn http_formats_statuses_and_views() {
    let q = QueryServer::start(&[]);

    // JSON, the default.
    let rows = q.rows(NOC, "SELECT tenant, count(*) AS n FROM events GROUP BY tenant ORDER BY tenant");
    let tenants: Vec<&str> = rows.iter().map(|r| r["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["acme", "beta", "globex"]);
    let per_tenant = rows[0]["n"].as_i64().unwrap();
    assert_eq!(per_tenant, 2 * (5 * 4 + 3 + 1), "events per tenant");
    assert!(rows.iter().all(|r| r["n"].as_i64() == Some(per_tenant)));

    // CSV.
    let (status, ctype, body) = q.post(Some(NOC), "SELECT tenant, count(*) AS n FROM events GROUP BY tenant ORDER BY tenant", "text/csv");
    assert_eq!((status, ctype.as_str()), (200, "text/csv"));
    let text = String::from_utf8(body).unwrap();
    assert_eq!(text, format!("tenant,n\nacme,{per_tenant}\nbeta,{per_tenant}\nglobex,{per_tenant}\n"));
    let (_, _, body) = q.post(Some(NOC), "SELECT tenant FROM events WHERE false", "text/csv");
    assert_eq!(String::from_utf8(body).unwrap(), "tenant\n", "empty CSV keeps its header");

    // Arrow IPC stream.
    let (status, ctype, body) = q.post(Some(ACME), "SELECT node, level_rank FROM events ORDER BY node, level_rank", "application/vnd.apache.arrow.stream");
    assert_eq!((status, ctype.as_str()), (200, "application/vnd.apache.arrow.stream"));
    let reader = StreamReader::try_new(std::io::Cursor::new(body), None).unwrap();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>() as i64, per_tenant);
    assert_eq!(batches[0].schema().field(0).name(), "node");

    // Error statuses, each with a JSON error body.
    let cases: Vec<(Option<&str>, &str, u16)> = vec![
        (Some(NOC), "SELEC nonsense", 400),
        (Some(NOC), "SELECT * FROM no_such_table", 400),
        (None, "SELECT 1", 401),
        (Some("not-a-real-token"), "SELECT 1", 401),
        (Some(NOC), "DROP TABLE events", 403),
        (Some(NOC), "SELECT count(*) FROM generate_series(1, 20000000000)", 408),
        (Some(NOC), "SELECT * FROM generate_series(1, 100000)", 413),
    ];
    for (token, sql, want) in cases {
        let (status, ctype, body) = q.post(token, sql, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("{sql}: {}", String::from_utf8_lossy(&body)));
        assert_eq!(status, want, "{sql}: {v}");
        assert_eq!(ctype, "application/json");
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()), "{sql}: {v}");
    }
    let (status, _, _) = q.post_raw(Some(NOC), "not json", "application/json");
    assert_eq!(status, 400);

    // Views.
    let audit = q.rows(NOC, "SELECT tenant, poller, epoch, first_missing, missing, kind FROM loss_audit ORDER BY first_missing");
    let per_poller = per_tenant / 2 + 5 + 1; // events + node snapshots + heartbeat
    assert_eq!(
        audit,
        vec![
            serde_json::json!({"tenant":"acme","poller":"acme-p2","epoch":1,"first_missing":11,"missing":4,"kind":"gap"}),
            serde_json::json!({"tenant":"acme","poller":"acme-p2","epoch":1,"first_missing":per_poller - 2,"missing":3,"kind":"tail"}),
        ]
    );
    assert!(q.rows(BETA, "SELECT * FROM loss_audit").is_empty(), "beta has no loss");

    // Node Down/Up and Interface Down/Up pairs: per poller, the odd nodes keep
    // Interface Down open and node 1 has a second Node Down.
    let active = q.rows(ACME, "SELECT node, event, element, level FROM active_events ORDER BY node, event, element");
    let summary: Vec<String> = active
        .iter()
        .map(|r| format!("{}|{}|{}|{}", r["node"].as_str().unwrap(), r["event"].as_str().unwrap(), r["element"].as_str().unwrap(), r["level"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        ["acme-node-1|Interface Down|Gi0/1|Major", "acme-node-1|Node Down||Fatal", "acme-node-3|Interface Down|Gi0/1|Major"]
    );
    let pollers = q.rows(NOC, "SELECT tenant, poller, status, last_seq FROM pollers ORDER BY tenant, poller");
    assert_eq!(pollers.len(), 6);
    assert!(pollers.iter().all(|p| p["status"] == "up"), "{pollers:?}");
    assert_eq!(q.count(NOC, "SELECT count(*) FROM nodes"), 15, "latest snapshot per (tenant, node)");
    assert_eq!(q.count(NOC, "SELECT count(*) FROM node_snapshots"), 30);

    // Health and metrics.
    let health = crate::harness::http_get(q.http, "/healthz").unwrap();
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let metrics = crate::harness::http_get(q.http, "/metrics").unwrap();
    for name in ["estate_query_queries_total", "estate_query_latency_seconds_bucket", "estate_query_rows_total", "estate_query_bytes_scanned_total", "estate_query_files_pruned_total"] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    assert!(crate::harness::metric_sum(&metrics, "estate_query_queries_total") >= 10.0);
    assert!(crate::harness::metric_sum(&metrics, "estate_query_bytes_scanned_total") > 0.0);
}

/// Rows and text of an `acme` answer must not mention another tenant.
fn assert_no_leak(what: &str, status: u16, body: &[u8], store: &Path) {
    let text = String::from_utf8_lossy(body);
    for marker in FOREIGN {
        assert!(!text.contains(marker), "{what}: answer ({status}) leaks {marker:?}: {text}");
    }
    let store = store.to_str().unwrap();
    assert!(status == 200 || !text.contains(store), "{what}: error reveals the store path: {text}");
}

#[test]
fn isolation_suite() {
    let q = QueryServer::start(&[]);
    let store = q.store.clone();
    let beta_file = walk_parquet(&store.join("events")).into_iter().find(|p| p.contains("tenant=beta")).unwrap();

    // (description, SQL, statuses accepted). Every case also passes assert_no_leak.
    let attempts: Vec<(&str, String, &[u16])> = vec![
        ("WHERE on another tenant", "SELECT * FROM events WHERE tenant = 'beta'".into(), &[200]),
        ("negated tenant filter", "SELECT * FROM events WHERE tenant <> 'acme'".into(), &[200]),
        ("OR true", "SELECT * FROM events WHERE tenant = 'beta' OR 1 = 1".into(), &[200]),
        ("distinct tenants", "SELECT DISTINCT tenant FROM events".into(), &[200]),
        // DataFusion 55 failed this one (DISTINCT over a view under the row limit).
        ("distinct tenants of a view", "SELECT DISTINCT tenant FROM active_events".into(), &[200]),
        ("information_schema tables", "SELECT * FROM information_schema.tables".into(), &[200]),
        ("information_schema columns", "SELECT * FROM information_schema.columns".into(), &[200]),
        ("information_schema views", "SELECT * FROM information_schema.views".into(), &[200]),
        ("settings", "SELECT * FROM information_schema.df_settings".into(), &[200]),
        ("SHOW TABLES", "SHOW TABLES".into(), &[200]),
        ("SHOW setting", "SHOW ALL".into(), &[403]),
        ("CREATE EXTERNAL TABLE", format!("CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '{}'", store.join("events/tenant=beta").display()), &[403]),
        ("COPY TO", "COPY events TO '/tmp/estate-leak.parquet'".into(), &[403]),
        ("COPY query TO", "COPY (SELECT 1) TO '/tmp/estate-leak.csv'".into(), &[403]),
        ("COPY FROM", format!("COPY events FROM '{beta_file}'"), &[400, 403]),
        ("INSERT", "INSERT INTO events SELECT * FROM events".into(), &[403]),
        ("CREATE VIEW", "CREATE VIEW v AS SELECT * FROM events".into(), &[403]),
        ("DROP", "DROP TABLE events".into(), &[403]),
        ("SET option", "SET datafusion.execution.target_partitions = 1".into(), &[403]),
        ("file as table", format!("SELECT * FROM '{beta_file}'"), &[403]),
        ("URL as table", format!("SELECT * FROM 'file://{beta_file}'"), &[403]),
        ("read_parquet", format!("SELECT * FROM read_parquet('{beta_file}')"), &[403]),
        ("read_csv in subquery", "SELECT * FROM events WHERE node IN (SELECT * FROM read_csv('/etc/passwd'))".into(), &[403]),
        ("UNION", "SELECT node, details FROM events UNION ALL SELECT node, details FROM events WHERE tenant = 'beta'".into(), &[200]),
        ("subquery", "SELECT * FROM events WHERE tenant IN (SELECT 'beta' UNION SELECT 'globex')".into(), &[200]),
        ("CTE", "WITH x AS (SELECT * FROM events WHERE tenant = 'beta') SELECT * FROM x".into(), &[200]),
        ("qualified name", "SELECT * FROM estate.public.events WHERE tenant = 'beta'".into(), &[200]),
        ("default catalog name", "SELECT * FROM datafusion.public.events".into(), &[400]),
        ("views", "SELECT * FROM nodes UNION ALL SELECT * FROM nodes".into(), &[200]),
        ("node snapshots", "SELECT * FROM node_snapshots".into(), &[200]),
        ("heartbeats", "SELECT * FROM heartbeats".into(), &[200]),
        ("receipts", "SELECT * FROM receipts".into(), &[200]),
        ("pollers view", "SELECT * FROM pollers".into(), &[200]),
        ("loss audit", "SELECT * FROM loss_audit".into(), &[200]),
        ("active events", "SELECT * FROM active_events".into(), &[200]),
        ("EXPLAIN", "EXPLAIN SELECT * FROM events".into(), &[200]),
        ("EXPLAIN other tenant", "EXPLAIN SELECT * FROM events WHERE tenant = 'beta'".into(), &[200]),
        ("EXPLAIN ANALYZE", "EXPLAIN ANALYZE SELECT * FROM events".into(), &[200]),
        ("error naming a path", format!("SELECT * FROM \"{}\"", store.join("events").display()), &[403]),
        ("error from a bad cast", "SELECT CAST(details AS INT) FROM events".into(), &[400]),
        ("two statements", "SELECT 1; SELECT * FROM events".into(), &[403]),
    ];
    assert!(attempts.len() >= 25);
    for (what, sql, ok) in &attempts {
        let (status, _, body) = q.post(Some(ACME), sql, "application/json");
        assert!(ok.contains(&status), "{what}: status {status}, want {ok:?}: {}", String::from_utf8_lossy(&body));
        assert_no_leak(what, status, &body, &store);
        if status == 200 && sql.starts_with("SELECT") && sql.contains("events") {
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            for r in &rows {
                if let Some(t) = r.get("tenant") {
                    assert_eq!(t, "acme", "{what}: row of another tenant {r}");
                }
            }
        }
    }

    // EXPLAIN names acme's files only.
    let (_, _, body) = q.post(Some(ACME), "EXPLAIN SELECT * FROM events", "text/csv");
    let plan = String::from_utf8_lossy(&body);
    assert!(plan.contains("tenant=acme"), "{plan}");
    // The operator's plan does list the others, so the check above is not vacuous.
    let (_, _, body) = q.post(Some(NOC), "EXPLAIN SELECT * FROM events", "text/csv");
    assert!(String::from_utf8_lossy(&body).contains("tenant=beta"));

    // Counts: acme sees only itself, beta only itself.
    assert_eq!(q.count(ACME, "SELECT count(*) FROM events WHERE tenant <> 'acme'"), 0);
    assert_eq!(q.count(BETA, "SELECT count(*) FROM events WHERE tenant = 'acme'"), 0);
    let acme_n = q.count(ACME, "SELECT count(*) FROM events");
    assert!(acme_n > 0);
    assert_eq!(q.count(NOC, "SELECT count(*) FROM events"), 3 * acme_n);

    // Tokens: another tenant's token sees its own data only; forged tokens are refused.
    for token in ["beta", "acme", "../beta", "tenant=beta", "acme-token-1 ", "Acme-token-1"] {
        let (status, _, body) = q.post(Some(token), "SELECT * FROM events", "application/json");
        if token == "acme-token-1 " {
            // Trailing whitespace is trimmed from the header: it is the real token.
            assert_eq!(status, 200);
            continue;
        }
        assert_eq!(status, 401, "token {token:?}: {}", String::from_utf8_lossy(&body));
    }
}

fn walk_parquet(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_parquet(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p.to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn limits_and_live_commits() {
    let q = QueryServer::start(&[]);

    // Over the memory limit: fails cleanly, and the service answers the next query.
    let (status, _, body) =
        q.post(Some(NOC), "SELECT cardinality(array_agg(value)) FROM generate_series(1, 20000000)", "application/json");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("memory"), "{text}");
    assert_eq!(q.count(NOC, "SELECT count(*) FROM events"), 144);

    // Over the time limit: cancelled with 408 well before it could finish.
    let t = Instant::now();
    let (status, _, _) = q.post(Some(ACME), "SELECT count(*) FROM generate_series(1, 50000000000)", "application/json");
    assert_eq!(status, 408);
    assert!(t.elapsed() < Duration::from_secs(10), "took {:?}", t.elapsed());

    // Per-tenant concurrency: two slow acme queries hold acme's slots; a
    // third acme query is refused with 429, while beta is still served.
    let slow = "SELECT count(*) FROM generate_series(1, 50000000000)";
    let q = Arc::new(q);
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || q.post(Some(ACME), slow, "application/json").0)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (status, _, _) = q.post(Some(ACME), "SELECT 1", "application/json");
    assert_eq!(status, 429, "acme is over its concurrency budget");
    assert_eq!(q.count(BETA, "SELECT count(*) FROM events"), 48, "beta is not starved");
    for h in hogs {
        assert_eq!(h.join().unwrap(), 408);
    }

    // A new commit becomes visible without a restart, within the refresh
    // interval plus one second.
    let before = q.count(ACME, "SELECT count(*) FROM events");
    let now = now_ms();
    let msg = format!(
        r#"{{"v":1,"type":"event","tenant":"acme","poller":"acme-p9","epoch":1,"seq":1,"time":{now},"node":"late-node","event":"Node Down","level":"Major","state":"down"}}"#
    );
    commit(&q.store, "acme", &[msg], vec![receipt("acme", "acme-p9", 1, 1)]);
    let committed = Instant::now();
    loop {
        if q.count(ACME, "SELECT count(*) FROM events") == before + 1 {
            break;
        }
        assert!(committed.elapsed() < Duration::from_millis(1_200), "new commit not visible after {:?}", committed.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(q.count(BETA, "SELECT count(*) FROM events WHERE node = 'late-node'"), 0);

    // SIGHUP reloads the auth file: beta's token is revoked.
    std::fs::write(&q.auth, format!("[[token]]\ntoken = \"{ACME}\"\ntenant = \"acme\"\n")).unwrap();
    let pid = q.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let t = Instant::now();
    while q.post(Some(BETA), "SELECT 1", "application/json").0 != 401 {
        assert!(t.elapsed() < Duration::from_secs(5), "SIGHUP did not reload the auth file");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(q.post(Some(ACME), "SELECT 1", "application/json").0, 200);
}

/// A table with a Delta feature estate does not write itself (here deletion
/// vectors, as another tool might enable) is read through delta-rs's scan:
/// the same answers, the same tenancy.
#[test]
fn foreign_delta_features_fall_back_to_delta_rs() {
    let q = QueryServer::start(&[]);
    let sql = [
        "SELECT tenant, level, count(*) AS n FROM events GROUP BY tenant, level ORDER BY tenant, level",
        "SELECT node, event, element, state FROM events ORDER BY node, time, event, element",
        "SELECT tenant, node, event, element FROM active_events ORDER BY tenant, node, event, element",
        "SELECT tenant, poller, status FROM pollers ORDER BY tenant, poller",
    ];
    let answers = |token: &str| sql.iter().map(|s| q.rows(token, s)).collect::<Vec<_>>();
    let before = (answers(NOC), answers(ACME));
    assert!(before.1[1].len() > 10, "acme has events");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(q.store.to_str().unwrap(), Default::default(), None).unwrap();
        let mut table = store.table("events").unwrap();
        table.load().await.unwrap();
        table
            .add_feature()
            .with_feature(deltalake::kernel::TableFeatures::DeletionVectors)
            .with_allow_protocol_versions_increase(true)
            .await
            .expect("enabling deletion vectors");
    });
    let t = Instant::now();
    while !q.log_text().contains("reading it through delta-rs's scan") {
        assert!(t.elapsed() < Duration::from_secs(10), "the new protocol was not noticed:\n{}", q.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }

    assert_eq!((answers(NOC), answers(ACME)), before);
    assert_eq!(q.count(ACME, "SELECT count(*) FROM events"), 48);
    let (status, _, body) = q.post(Some(ACME), "EXPLAIN SELECT * FROM events", "application/json");
    assert_no_leak("EXPLAIN through delta-rs", status, &body, &q.store);
    assert!(String::from_utf8_lossy(&body).contains("tenant=acme"), "{}", String::from_utf8_lossy(&body));
}

#[test]
fn empty_estate_answers_empty() {
    let q = QueryServer::start_with(|_| {}, &[]);
    for table in ["events", "nodes", "node_snapshots", "heartbeats", "receipts", "active_events", "pollers", "loss_audit"] {
        for token in [NOC, ACME] {
            assert!(q.rows(token, &format!("SELECT * FROM {table}")).is_empty(), "{table}");
        }
    }
    assert_eq!(q.count(NOC, "SELECT count(*) FROM events"), 0);
    for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/query/queries")).unwrap() {
        let sql = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(q.rows(NOC, &sql).is_empty(), "{sql}");
    }
}

#[test]
fn flight_sql() {
    let q = QueryServer::start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {

        use harness::{flight_client as client, flight_fetch as fetch};
        let rows = |b: &[RecordBatch]| b.iter().map(|b| b.num_rows()).sum::<usize>();

        let mut acme = client(q.flight, ACME).await;
        let mut beta = client(q.flight, BETA).await;

        // A statement query.
        let info = acme.execute("SELECT tenant, node FROM events ORDER BY node".into(), None).await.unwrap();
        let batches = fetch(&mut acme, info).await;
        assert_eq!(rows(&batches), 48);
        let tenants = deltalake::arrow::compute::cast(batches[0].column(0), &deltalake::arrow::datatypes::DataType::Utf8).unwrap();
        let tenants = tenants.as_any().downcast_ref::<deltalake::arrow::array::StringArray>().unwrap();
        assert!((0..tenants.len()).all(|i| tenants.value(i) == "acme"));

        // A prepared statement, and its handle is useless under another token.
        let mut prepared = acme.prepare("SELECT count(*) AS n FROM events WHERE tenant = 'acme'".into(), None).await.unwrap();
        let info = prepared.execute().await.unwrap();
        let batches = fetch(&mut acme, info.clone()).await;
        assert_eq!(rows(&batches), 1);
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        let err = beta.do_get(ticket).await.expect_err("beta must not run acme's prepared statement");
        assert!(err.to_string().contains("unknown prepared statement"), "{err}");
        let mut noc = client(q.flight, NOC).await;
        let ticket = info.endpoint[0].ticket.clone().unwrap();
        assert!(noc.do_get(ticket).await.is_err(), "not even the operator may reuse acme's handle");
        prepared.close().await.unwrap();

        // Refused statements and bad tokens.
        let err = acme.execute("DROP TABLE events".into(), None).await.unwrap_err();
        assert!(err.to_string().to_lowercase().contains("not allowed"), "{err}");
        let mut nobody = client(q.flight, "wrong-token-123").await;
        assert!(nobody.execute("SELECT 1".into(), None).await.is_err());

        // Metadata calls clients make on connect.
        let info = acme.get_catalogs().await.unwrap();
        assert_eq!(rows(&fetch(&mut acme, info).await), 1);
        let info = acme
            .get_db_schemas(arrow_flight::sql::CommandGetDbSchemas { catalog: None, db_schema_filter_pattern: None })
            .await
            .unwrap();
        assert_eq!(rows(&fetch(&mut acme, info).await), 2);
        let info = acme
            .get_tables(arrow_flight::sql::CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: Some("public".into()),
                table_name_filter_pattern: None,
                table_types: vec![],
                include_schema: true,
            })
            .await
            .unwrap();
        let tables = fetch(&mut acme, info).await;
        let names = deltalake::arrow::compute::cast(tables[0].column(2), &deltalake::arrow::datatypes::DataType::Utf8).unwrap();
        let names = names.as_any().downcast_ref::<deltalake::arrow::array::StringArray>().unwrap();
        let mut got: Vec<&str> = (0..names.len()).map(|i| names.value(i)).collect();
        got.sort();
        assert_eq!(got, ["active_events", "events", "heartbeats", "loss_audit", "node_snapshots", "nodes", "pollers", "receipts"]);
        let info = acme.get_table_types().await.unwrap();
        assert_eq!(rows(&fetch(&mut acme, info).await), 2);
        let info = acme.get_sql_info(vec![arrow_flight::sql::SqlInfo::FlightSqlServerName]).await.unwrap();
        assert_eq!(rows(&fetch(&mut acme, info).await), 1);
    });

    // A real third-party client: the ADBC Flight SQL driver.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/scripts/adbc_smoke.py");
    let out = Command::new(test_python())
        .args([script, &format!("grpc://127.0.0.1:{}", q.flight), ACME, "48"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("adbc ok"), "ADBC client failed:\n{text}");
}

/// The Python with DuckDB, deltalake and pyarrow that `scripts/install-test-deps.sh` sets up.
fn test_python() -> PathBuf {
    let p = std::env::var_os("ESTATE_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/estate/venv/bin/python")
    });
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps.sh (it creates a venv with duckdb, deltalake and pyarrow from PyPI)",
        p.display()
    );
    p
}

#[test]
fn standard_queries_match_duckdb() {
    let python = test_python();
    let fill = |store: &Path| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let store = Store::open(store.to_str().unwrap(), Default::default(), None).unwrap();
            let spec = estate_benches::dataset::Spec {
                tenants: 3,
                pollers: 2,
                nodes: 20,
                events: 20_000,
                commit_rows: 5_000,
                span_hours: 23,
                now_ms: now_ms(),
                seed: 7,
            };
            estate_benches::dataset::generate(&store, &spec).await.unwrap();
        });
    };
    let q = QueryServer::start_with(fill, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/scripts/duckdb_compare.py");
    let out = Command::new(python)
        .args([script, "check", "--url", &format!("http://127.0.0.1:{}", q.http), "--token", NOC])
        .args(["--store", q.store.to_str().unwrap(), "--threads", "2"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "estate and DuckDB disagree:\n{text}");
    assert_eq!(text.matches(" same").count(), 8, "{text}");
}
