//! Storage lifecycle: `estate compact` beside live ingest and queries,
//! retention per tenant, a SIGKILL in the middle of compaction, and time
//! travel (`as_of`) across later ingest and compaction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::mocking::MockCluster;

use crate::harness::*;
use crate::query::{ACME, BETA, NOC, QueryServer, commit, commit_at, commit_multi, receipt, tenant_messages, write_estate};

const DAY_MS: i64 = 86_400_000;

/// A child process that a failing test does not leave behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `estate compact` once (no --interval) and returns its JSON report.
fn compact_once(store: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(["compact", "--store", store.to_str().unwrap()])
        .args(extra)
        .env("ESTATE_LOG", "info,deltalake_core=warn,buoyant_kernel=warn")
        .output()
        .expect("running estate compact");
    assert!(out.status.success(), "estate compact failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("report {text:?}: {e}"))
}

/// Active data files per (tenant, date) of a table, from its Delta log.
fn files_per_partition(store: &Path, table: &str) -> BTreeMap<(String, String), i64> {
    let dir = store.join(table);
    let mut out = BTreeMap::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = url::Url::from_directory_path(&dir).unwrap();
        let t = deltalake::DeltaTableBuilder::from_url(url).unwrap().load().await.unwrap();
        for f in t.snapshot().unwrap().log_data().iter() {
            let mut pv = f.partition_values_map();
            let tenant = pv.remove("tenant").flatten().unwrap_or_default();
            let date = pv.remove("date").flatten().unwrap_or_default();
            *out.entry((tenant, date)).or_insert(0) += 1;
        }
    });
    out
}

/// Commits in the Delta log whose operation is `op`.
fn log_ops(store: &Path, table: &str, op: &str) -> usize {
    let needle = format!("\"operation\":\"{op}\"");
    std::fs::read_dir(store.join(table).join("_delta_log"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&needle)))
                .count()
        })
        .unwrap_or(0)
}

fn date_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%d").to_string()
}

/// Compaction runs every 300 ms while ingest commits every 300 ms and five
/// clients query: every answer holds exactly the offsets 0..n of each Kafka
/// partition once (nothing missing, nothing twice), answers never go back,
/// and in the end the file count per (tenant, date) is 1.
#[test]
fn compaction_beside_live_ingest_and_queries() {
    let q = QueryServer::start_with(|_| {}, &[]);
    let store = q.store.clone();
    let m = MockCluster::new(1).expect("mock cluster");
    for (t, p) in [("estate.events", 3), ("estate.dlq", 1), ("estate.deduped", 1)] {
        m.create_topic(t, p, 1).expect("create topic");
    }
    let brokers = m.bootstrap_servers();
    let logs = tempfile::tempdir().unwrap();
    let mut ingest = Ingest::start(&brokers, &store, "g-lifecycle", &["--deduped-topic", ""], logs.path(), 0);
    let compactor_log = logs.path().join("compact.log");
    let mut compactor = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_estate"))
            .args(["compact", "--store", store.to_str().unwrap(), "--min-files", "2", "--interval", "300ms"])
            .env("ESTATE_LOG", "info,deltalake_core=warn,buoyant_kernel=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&compactor_log).unwrap())
            .spawn()
            .expect("spawning estate compact"),
    );

    // Five clients: two per tenant token and one operator.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    // Operators check exact offsets per Kafka partition; tenants share
    // partitions, so theirs check that no row appears twice.
    for (i, token) in [ACME, BETA, NOC, NOC, ACME].into_iter().enumerate() {
        let stop = stop.clone();
        let http = q.http;
        clients.push(std::thread::spawn(move || {
            let sql = "SELECT src_partition AS p, count(*) AS n, count(DISTINCT src_offset) AS d, \
                       min(src_offset) AS lo, max(src_offset) AS hi FROM events GROUP BY src_partition";
            let body = serde_json::json!({ "sql": sql }).to_string();
            let mut last: BTreeMap<i64, i64> = BTreeMap::new();
            let mut answers = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, _, bytes) = http_post(http, "/v1/sql", Some(token), &body, "application/json");
                assert_eq!(status, 200, "client {i}: {}", String::from_utf8_lossy(&bytes));
                let rows: Vec<serde_json::Value> = serde_json::from_slice(&bytes).unwrap();
                for r in rows {
                    let (p, n, d, lo, hi) = (r["p"].as_i64().unwrap(), r["n"].as_i64().unwrap(), r["d"].as_i64().unwrap(), r["lo"].as_i64().unwrap(), r["hi"].as_i64().unwrap());
                    if token == NOC {
                        assert_eq!((n, lo, hi), (d, 0, n - 1), "client {i}: partition {p} is not exactly offsets 0..{n}: {r}");
                    } else {
                        assert_eq!(n, d, "client {i}: partition {p} has a row twice: {r}");
                    }
                    let prev = last.insert(p, n).unwrap_or(0);
                    assert!(n >= prev, "client {i}: partition {p} went back from {prev} to {n} rows");
                }
                answers += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        }));
    }

    // Live traffic: 3 tenants, 40 rounds of 150 events, 150 ms apart.
    let tenants = ["acme", "beta", "globex"];
    let now = now_ms();
    let mut seq = [0i64; 3];
    let mut expected = BTreeMap::new();
    for round in 0..40 {
        let mut msgs = Vec::new();
        for i in 0..150 {
            let t = i % 3;
            seq[t] += 1;
            let id = format!("{:016x}", (round * 1000 + i) as u64 * 0x9E37_79B9);
            let payload = event_json(tenants[t], &format!("{}-p1", tenants[t]), seq[t], &id, i % 20, now - 60_000 + seq[t]);
            msgs.push(Msg { topic: "estate.events".into(), key: Some(tenants[t].as_bytes().to_vec()), payload: payload.into_bytes() });
            *expected.entry(tenants[t]).or_insert(0i64) += 1;
        }
        produce(&brokers, &msgs);
        std::thread::sleep(Duration::from_millis(150));
    }
    let total: i64 = expected.values().sum();
    wait_for_logged(Duration::from_secs(120), "every event stored", &[&ingest], || events_count(&store) == total);
    let optimized_live = log_ops(&store, "events", "OPTIMIZE");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let answers = c.join().expect("a query client failed");
        assert!(answers >= 5, "a client got only {answers} answers");
    }
    assert!(optimized_live > 0, "no compaction commit landed during live ingest:\n{}", std::fs::read_to_string(&compactor_log).unwrap_or_default());
    let _ = Command::new("kill").args(["-TERM", &compactor.0.id().to_string()]).status();
    let stopped = compactor.0.wait().unwrap();
    assert!(stopped.success(), "estate compact exits cleanly on SIGTERM: {stopped}");
    assert!(ingest.terminate().success());

    // A final pass leaves one file per (tenant, date); the data is unchanged.
    let before = files_per_partition(&store, "events");
    let report = compact_once(&store, &["--min-files", "2"]);
    let after = files_per_partition(&store, "events");
    assert!(after.values().all(|&n| n == 1), "files per partition after compaction: {after:?} (before {before:?})");
    let writes = log_ops(&store, "events", "WRITE");
    assert!(writes > 2 * after.len(), "ingest wrote {writes} commits of small files; {} partitions", after.len());
    assert!(report["files_after"].as_u64() <= report["files_before"].as_u64(), "report: {report}");
    for (tenant, n) in &expected {
        let got = sql_i64(&store, &format!("SELECT count(*) FROM events WHERE tenant = '{tenant}'"));
        assert_eq!(got, *n, "{tenant} after compaction");
    }
    let rows = q.rows(NOC, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM events");
    assert_eq!((rows[0]["n"].as_i64(), rows[0]["d"].as_i64()), (Some(total), Some(total)));
}

/// Old partitions go, per tenant; nothing else is touched; VACUUM then
/// deletes exactly the unreferenced files.
#[test]
fn retention_removes_exactly_the_expired_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let now = now_ms();
    let ages = [0i64, 3, 10, 45, 400];
    for tenant in ["acme", "beta", "globex"] {
        for age in ages {
            let at = now - age * DAY_MS;
            let msgs = tenant_messages(tenant, at);
            let per_poller = msgs.len() as i64 / 2;
            let receipts = vec![receipt(tenant, &format!("{tenant}-p1"), 1, per_poller)];
            commit_at(&store, tenant, &msgs, receipts, at);
        }
    }
    let policy = dir.path().join("retention.toml");
    std::fs::write(&policy, "[tenants]\nbeta = \"5d\"\nglobex = \"0s\"\n").unwrap();
    let keep: BTreeMap<&str, Vec<i64>> = BTreeMap::from([("acme", vec![0, 3, 10]), ("beta", vec![0, 3]), ("globex", ages.to_vec())]);
    // The date partitions each tenant has, per table, before.
    let events_before = files_per_partition(&store, "events");
    let report = compact_once(&store, &["--retention-file", policy.to_str().unwrap(), "--vacuum-retention", "0s", "--min-files", "1000"]);
    for table in ["events", "nodes", "heartbeats", "receipts"] {
        let have: BTreeSet<(String, String)> = files_per_partition(&store, table).into_keys().collect();
        let mut want = BTreeSet::new();
        for (tenant, ages) in &keep {
            for age in ages {
                // Events and node snapshots are timed from an hour before `at`
                // (tenant_messages); heartbeats and receipts at `at`.
                let at = now - age * DAY_MS;
                let times: &[i64] = if table == "receipts" || table == "heartbeats" { &[at] } else { &[at - 3_600_000, at - 3_600_000 + 300_000] };
                for t in times {
                    want.insert((tenant.to_string(), date_of(*t)));
                }
            }
        }
        assert_eq!(have, want, "{table}: the partitions left are exactly the unexpired ones");
    }
    // Row counts of kept partitions are exactly what was written.
    let globex_rows = sql_i64(&store, "SELECT count(*) FROM events WHERE tenant = 'globex'");
    let per_commit = tenant_messages("globex", now).iter().filter(|m| m.contains("\"type\":\"event\"")).count() as i64;
    assert_eq!(globex_rows, per_commit * ages.len() as i64, "globex keeps everything");
    assert_eq!(sql_i64(&store, "SELECT count(*) FROM events WHERE tenant = 'acme'"), per_commit * 3);
    assert_eq!(sql_i64(&store, "SELECT count(*) FROM events WHERE tenant = 'beta'"), per_commit * 2);
    assert!(report["partitions_expired"].as_u64().unwrap() >= 3, "{report}");
    // VACUUM (0 s delay here) deleted the expired files from storage: every
    // parquet file left under events/ is referenced.
    let referenced: usize = files_per_partition(&store, "events").values().sum::<i64>() as usize;
    let on_disk = walk(&store.join("events")).into_iter().filter(|p| p.ends_with(".parquet")).count();
    assert_eq!(on_disk, referenced, "unreferenced files left after vacuum (before: {events_before:?})");
    assert!(report["files_vacuumed"].as_u64().unwrap() > 0, "{report}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// SIGKILL while compaction is half done: the table stays readable and
/// exact, and the next run finishes the job.
#[test]
fn sigkill_mid_compaction_then_next_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let now = now_ms();
    let tenants = ["t1", "t2", "t3", "t4", "t5", "t6"];
    // 6 tenants x 4 dates = 24 partitions, 12 files each.
    for round in 0..12i64 {
        let mut msgs = Vec::new();
        for (ti, tenant) in tenants.iter().enumerate() {
            for day in 0..4i64 {
                for i in 0..5i64 {
                    let seq = (round * 4 + day) * 5 + i + 1;
                    let id = format!("{:016x}", (ti as i64) << 40 | seq);
                    let t = now - day * DAY_MS - 600_000 + seq;
                    msgs.push((*tenant, event_json(tenant, &format!("{tenant}-p1"), seq, &id, i as usize, t)));
                }
            }
        }
        let refs: Vec<(&str, &str)> = msgs.iter().map(|(t, m)| (*t, m.as_str())).collect();
        commit_multi(&store, &refs, vec![], now);
    }
    let count = |store: &Path| sql_i64(store, "SELECT count(*) FROM events");
    let sum = |store: &Path| sql_i64(store, "SELECT sum(seq) FROM events");
    let (n0, s0) = (count(&store), sum(&store));
    assert_eq!(n0, 6 * 12 * 4 * 5);
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_estate"))
            .args(["compact", "--store", store.to_str().unwrap(), "--min-files", "2"])
            .env("ESTATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while log_ops(&store, "events", "OPTIMIZE") == 0 {
        assert!(std::time::Instant::now() < deadline, "no compaction commit within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.0.kill().unwrap();
    let _ = child.0.wait();
    let done = log_ops(&store, "events", "OPTIMIZE");
    let files = files_per_partition(&store, "events");
    assert!(done < 24, "the kill came after all {done} partitions were compacted; nothing was interrupted");
    assert!(files.values().any(|&n| n > 1), "some partitions are still fragmented: {files:?}");
    assert_eq!((count(&store), sum(&store)), (n0, s0), "readable and exact after the kill");
    compact_once(&store, &["--min-files", "2"]);
    let files = files_per_partition(&store, "events");
    assert!(files.values().all(|&n| n == 1), "the next run finished the job: {files:?}");
    assert_eq!((count(&store), sum(&store)), (n0, s0), "exact after the second run");
}

/// `as_of` answers as the estate was, after later ingest and compaction,
/// over HTTP and Flight SQL, tenant-scoped.
#[test]
fn as_of_returns_the_earlier_answer() {
    let q = QueryServer::start_with(write_estate, &[]);
    let sql = "SELECT tenant, count(*) AS n FROM events GROUP BY tenant ORDER BY tenant";
    let earlier = q.rows(NOC, sql);
    let earlier_acme = q.rows(ACME, sql);
    std::thread::sleep(Duration::from_millis(1100));
    let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(Duration::from_millis(1100));
    // Later ingest and a compaction.
    for _ in 0..3 {
        commit(&q.store, "acme", &tenant_messages("acme", now_ms()), vec![]);
    }
    let report = compact_once(&q.store, &["--min-files", "2"]);
    assert!(report["partitions_compacted"].as_u64().unwrap() >= 1, "{report}");
    wait_for(Duration::from_secs(10), "the later data to be visible", || q.rows(NOC, sql) != earlier);

    let as_of = |token: &str, at: serde_json::Value| {
        let body = serde_json::json!({ "sql": sql, "as_of": at }).to_string();
        let (status, _, bytes) = http_post(q.http, "/v1/sql", Some(token), &body, "application/json");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        serde_json::from_slice::<Vec<serde_json::Value>>(&bytes).unwrap()
    };
    assert_eq!(as_of(NOC, t.clone().into()), earlier, "operator as of {t}");
    assert_eq!(as_of(ACME, t.clone().into()), earlier_acme, "tenant as of {t}");
    assert!(as_of(NOC, "2001-01-01T00:00:00Z".into()).is_empty(), "before the estate existed: empty");
    // A version number names an events version: 0 is the table's creation.
    assert!(as_of(BETA, 0.into()).is_empty());
    let body = serde_json::json!({ "sql": sql, "as_of": "yesterday" }).to_string();
    let (status, _, bytes) = http_post(q.http, "/v1/sql", Some(NOC), &body, "application/json");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&bytes));

    // Flight SQL, with the x-estate-as-of header.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let n = rt.block_on(async {
        let mut c = flight_client(q.flight, ACME).await;
        c.set_header("x-estate-as-of", &t);
        let info = c.execute("SELECT count(*) AS n FROM events".into(), None).await.unwrap();
        let batches = flight_fetch(&mut c, info).await;
        let col = deltalake::arrow::compute::cast(batches[0].column(0), &deltalake::arrow::datatypes::DataType::Int64).unwrap();
        col.as_any().downcast_ref::<deltalake::arrow::array::Int64Array>().unwrap().value(0)
    });
    assert_eq!(Some(n), earlier_acme[0]["n"].as_i64(), "Flight SQL as of {t}");
}
