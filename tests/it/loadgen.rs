//! `estate loadgen` → `estate ingest` → `estate query` → `estate verify`,
//! all real binaries over the mock cluster and a real store directory: the
//! ground truth matches the tables, verify passes on the real estate and
//! fails, with a table, on a falsified truth.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;

use crate::harness::*;

fn run(args: &[&str], log: &Path) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(args)
        .env("ESTATE_LOG", "info,librdkafka=warn")
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::piped())
        .output()
        .expect("running estate");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn loadgen_truth_matches_the_estate_and_verify_proves_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    let m = MockCluster::new(3).expect("mock cluster");
    for (t, p) in [("estate.events", 2), ("estate.dlq", 1), ("estate.deduped", 1)] {
        m.create_topic(t, p, 3).unwrap();
    }
    let brokers = m.bootstrap_servers();
    let truth_path = d.join("truth.json");
    let (status, _) = run(
        &[
            "loadgen", "--brokers", &brokers, "--truth", truth_path.to_str().unwrap(),
            "--tenants", "2", "--pollers", "2", "--nodes", "20", "--rate", "500", "--duration", "6s",
            "--duplicates", "0.05", "--malformed", "0.05", "--mirror-pairs", "1",
            "--too-large-bytes", "20000", "--run-id", "it1", "--seed", "42", "--heartbeat-interval", "2s",
        ],
        &d.join("loadgen.log"),
    );
    assert!(status.success(), "loadgen failed: {}", std::fs::read_to_string(d.join("loadgen.log")).unwrap());
    let truth: serde_json::Value = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
    let rejects = truth["rejects"].as_object().unwrap();
    assert_eq!(rejects.len(), 13, "every DLQ reason is covered: {rejects:?}");
    let sent = &truth["sent"];
    assert!(sent["messages"].as_u64().unwrap() >= 2_500, "ran at the target rate: {sent}");
    assert!(sent["duplicates"].as_u64().unwrap() > 0 && sent["mirror_copies"].as_u64().unwrap() > 0);

    let ing = Ingest::start(&brokers, &store, "g-loadgen", &["--max-message-bytes", "16384"], d, 0);
    let want: i64 = truth["tenants"].as_object().unwrap().values().map(|t| t["distinct_events"].as_i64().unwrap()).sum();
    let messages = sent["messages"].as_i64().unwrap();
    wait_for_logged(Duration::from_secs(120), "every loadgen message receipted", &[&ing], || {
        events_count(&store) >= want
            && store.join("receipts/_delta_log").exists()
            && sql_i64(&store, "SELECT sum(stored) + sum(duplicates) + sum(rejected) FROM receipts") >= messages - rejects_without_seq(rejects)
    });
    // The truth, checked straight against the tables.
    for (tenant, t) in truth["tenants"].as_object().unwrap() {
        let n = sql_i64(&store, &format!("SELECT count(*) FROM events WHERE tenant = '{tenant}'"));
        let distinct = sql_i64(&store, &format!("SELECT count(DISTINCT event_id) FROM events WHERE tenant = '{tenant}'"));
        assert_eq!((n, distinct), (t["distinct_events"].as_i64().unwrap(), n), "{tenant}");
    }
    for p in truth["pollers"].as_array().unwrap() {
        let q = format!(
            "SELECT max(seq_end) FROM receipts WHERE tenant = '{}' AND poller = '{}' AND epoch = {}",
            p["tenant"].as_str().unwrap(), p["poller"].as_str().unwrap(), p["epoch"]
        );
        assert_eq!(sql_i64(&store, &q), p["max_seq"].as_i64().unwrap(), "{q}");
    }

    // The query service and verify, end to end.
    let auth = d.join("tokens.toml");
    std::fs::write(&auth, "[[token]]\ntoken = \"noc-secret\"\nrole = \"operator\"\n").unwrap();
    let http = free_port();
    let mut query = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(["query", "--store", store.to_str().unwrap(), "--auth-file", auth.to_str().unwrap()])
        .args(["--http-addr", &format!("127.0.0.1:{http}"), "--flight-addr", &format!("127.0.0.1:{}", free_port())])
        .env("ESTATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("query.log")).unwrap())
        .spawn()
        .expect("spawning estate query");
    let start = Instant::now();
    while http_get(http, "/healthz").is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "query did not start: {}", std::fs::read_to_string(d.join("query.log")).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{http}");
    let verify = |truth: &Path, log: &str| {
        run(
            &["verify", "--truth", truth.to_str().unwrap(), "--query-url", &url, "--token", "noc-secret", "--brokers", &brokers, "--wait", "30s"],
            &d.join(log),
        )
    };
    let (status, table) = verify(&truth_path, "verify.log");
    let _ = query.kill();
    let vlog = std::fs::read_to_string(d.join("verify.log")).unwrap();
    if !status.success() {
        let _ = query.wait();
        panic!("verify failed:\n{table}\n{vlog}\n{}", std::fs::read_to_string(d.join("query.log")).unwrap());
    }
    eprintln!("verify on the real estate:\n{table}");
    assert!(table.contains("events per tenant") && table.contains("dlq by reason") && !table.contains("MISMATCH"), "{table}");
    // A falsified truth (one event more, one reject less) fails, with a table.
    query = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(["query", "--store", store.to_str().unwrap(), "--auth-file", auth.to_str().unwrap()])
        .args(["--http-addr", &format!("127.0.0.1:{http}"), "--flight-addr", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while http_get(http, "/healthz").is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "query did not restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut bad = truth.clone();
    let t0 = bad["tenants"].as_object_mut().unwrap().values_mut().next().unwrap();
    t0["distinct_events"] = (t0["distinct_events"].as_i64().unwrap() + 1).into();
    bad["rejects"]["invalid_json"] = (rejects["invalid_json"].as_i64().unwrap() - 1).into();
    let bad_path = d.join("bad-truth.json");
    std::fs::write(&bad_path, serde_json::to_vec(&bad).unwrap()).unwrap();
    let (status, table) = {
        let url = url.clone();
        run(
            &["verify", "--truth", bad_path.to_str().unwrap(), "--query-url", &url, "--token", "noc-secret", "--brokers", &brokers],
            &d.join("verify-bad.log"),
        )
    };
    let _ = query.kill();
    let _ = query.wait();
    assert!(!status.success(), "verify must fail on a falsified truth:\n{table}");
    assert_eq!(table.matches("MISMATCH").count(), 2, "{table}");
}

/// Rejects ingest cannot receipt (no readable seq).
fn rejects_without_seq(rejects: &serde_json::Map<String, serde_json::Value>) -> i64 {
    ["invalid_json", "invalid_utf8", "invalid_field:seq"].iter().map(|r| rejects.get(*r).and_then(|v| v.as_i64()).unwrap_or(0)).sum()
}
