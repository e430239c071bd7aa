//! `estate loadgen --capacity` against real `estate ingest` and `estate
//! query` processes over the mock cluster and a real store directory: two
//! short steps at a low rate; the report holds real figures (every marker
//! seen, latencies measured, achieved rate near offered, lag and RSS from
//! ingest's metrics), the markers are rows in the store, and the chart is
//! drawn.

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use serde_json::Value;

use crate::harness::*;
use crate::query::{NOC, QueryServer};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn capacity_run_measures_a_real_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = MockCluster::new(3).expect("mock cluster");
    for (t, p) in [("estate.events", 4), ("estate.dlq", 1), ("estate.deduped", 1)] {
        m.create_topic(t, p, 3).unwrap();
    }
    let brokers = m.bootstrap_servers();
    let mut ingest = None;
    // Ingest first, so the query service opens existing tables.
    let q = QueryServer::start_with(
        |store| {
            let i = Ingest::start(&brokers, store, "g-capacity", &[], d, 0);
            // Tables created and partitions assigned: the first step measures the pipeline, not its start.
            wait_for_logged(Duration::from_secs(60), "ingest to create its tables and get its partitions", &[&i], || {
                store.join("events/_delta_log").exists() && metric_sum(&i.metrics(), "estate_ingest_partitions_assigned") >= 4.0
            });
            ingest = Some(i);
        },
        &[],
    );
    let ingest = ingest.expect("ingest started");
    let (out, chart) = (d.join("capacity.json"), d.join("capacity.svg"));
    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(["loadgen", "--capacity", "--brokers", &brokers, "--group", "g-capacity"])
        .args(["--query-url", &format!("http://127.0.0.1:{}", q.http), "--token", NOC])
        .args(["--ingest-metrics", &format!("http://127.0.0.1:{}", ingest.metrics_port)])
        .args(["--start-rate", "200", "--step-rate", "200", "--max-rate", "400", "--step-duration", "8s", "--slo", "5s"])
        .args(["--flush-interval", "300ms", "--marker-rate", "10", "--poll-interval", "100ms", "--sample-interval", "500ms", "--drain", "20s"])
        .args(["--tenants", "2", "--pollers", "2", "--nodes", "20", "--duplicates", "0", "--malformed", "0", "--run-id", "cap1", "--seed", "7"])
        .arg("--out")
        .arg(&out)
        .arg("--chart")
        .arg(&chart)
        .env("ESTATE_LOG", "info,librdkafka=warn")
        .output()
        .expect("running estate loadgen --capacity");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "capacity run failed:\n{stdout}\n{}\n--- ingest\n{}\n--- query\n{}",
        String::from_utf8_lossy(&run.stderr),
        ingest.log_tail(),
        q.log_text()
    );
    eprintln!("capacity table:\n{stdout}");
    assert!(took < Duration::from_secs(50), "the run took {took:?}");

    let r: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{r:#}");
    for (s, offered) in steps.iter().zip([200.0, 400.0]) {
        let ctx = serde_json::to_string_pretty(s).unwrap();
        assert_eq!(f(&s["offered_rate"]), offered, "{ctx}");
        let sent = f(&s["sent_rate"]);
        assert!((sent - offered).abs() <= 0.05 * offered, "sent {sent}/s of {offered}/s: {ctx}");
        // Ingest's own count of messages it committed (markers and heartbeats included).
        let ingested = f(&s["ingested_rate"]);
        assert!((ingested - offered).abs() <= 0.25 * offered, "ingested {ingested}/s of {offered}/s: {ctx}");
        assert!(f(&s["event_rows_rate"]) > 0.5 * offered, "{ctx}");
        let (sent_markers, seen) = (s["markers_sent"].as_u64().unwrap(), s["markers_seen"].as_u64().unwrap());
        assert!(sent_markers >= 70 && seen == sent_markers, "markers {seen}/{sent_markers}: {ctx}");
        let (p50, p99, max) = (f(&s["latency_p50_ms"]), f(&s["latency_p99_ms"]), f(&s["latency_max_ms"]));
        // A marker needs a broker round trip, a flush (300 ms) and a snapshot refresh (200 ms).
        assert!(p50 > 50.0 && p50 <= p99 && p99 <= max && p99 < 5000.0, "{ctx}");
        assert!(s["lag_end"].is_i64() && s["lag_max"].as_i64().unwrap() >= 0, "{ctx}");
        assert!(s["rss_max_bytes"].as_u64().unwrap() > 10 << 20, "{ctx}");
        assert_eq!(s["sustained"], true, "{ctx}");
    }
    assert_eq!(f(&r["max_sustained_rate"]), 400.0);
    assert!(r["stopped"].as_str().unwrap().starts_with("reached --max-rate"), "{}", r["stopped"]);
    assert_eq!(r["counters"]["delivery_failures"], 0);
    assert!(r["counters"]["queries"].as_u64().unwrap() > 20);
    let samples = r["samples"].as_array().unwrap();
    assert!(samples.len() >= 25 && samples.iter().all(|s| s["events_in"].is_u64() && s["lag"].is_i64()), "{} samples", samples.len());
    assert!(samples.iter().any(|s| s["lag"].as_i64().unwrap() > 0), "the group's lag is read from Kafka");
    // Reading the group's offsets never joined it: ingest kept every partition.
    assert_eq!(metric_sum(&ingest.metrics(), "estate_ingest_partitions_assigned"), 4.0);
    assert!(stdout.contains("max sustained: 400 messages/s"), "{stdout}");

    // The markers it timed are real rows, once each.
    let markers = r["markers"].as_array().unwrap().len() as i64;
    assert_eq!(sql_i64(&q.store, "SELECT count(*) FROM events WHERE tenant = 'capacity-markers'"), markers);
    assert_eq!(sql_i64(&q.store, "SELECT count(DISTINCT event_id) FROM events WHERE tenant = 'capacity-markers'"), markers);

    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("200/s") && svg.contains("400/s") && svg.matches("<circle").count() as i64 == markers);
}
