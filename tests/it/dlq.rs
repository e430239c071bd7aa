//! The operator tools end to end, with the real `estate` binary over the
//! mock cluster and a real store directory: `estate dlq inspect` counts what
//! ingest rejected, `estate dlq replay` (run twice) brings fixed records back
//! exactly once, and `estate status` reports pollers, loss, freshness, lag
//! and the DLQ rate of the running estate.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use serde_json::Value;

use crate::harness::*;

const TOPIC: &str = "estate.events";

/// Runs `estate <args>`; returns (success, stdout, stderr).
fn estate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(args)
        .env("ESTATE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("running estate");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `estate <args>` that must succeed and print JSON.
fn estate_json(args: &[&str]) -> Value {
    let (ok, out, err) = estate(args);
    assert!(ok, "estate {args:?} failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("estate {args:?}: not JSON ({e}):\n{out}"))
}

/// The high watermarks of a topic's partitions.
fn watermarks(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1).collect()
}

/// Every message of a topic: (partition, payload, `estate-replayed-from` header).
fn read_all(brokers: &str, topic: &str, partitions: i32) -> Vec<(i32, Vec<u8>, Option<String>)> {
    let highs = watermarks(brokers, topic, partitions);
    let c = reader_from_start(brokers, topic, partitions);
    let want: i64 = highs.iter().sum();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < want {
        assert!(Instant::now() < deadline, "read {} of {want} messages of {topic}", out.len());
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let replayed = m
                .headers()
                .and_then(|h| h.iter().find(|x| x.key == "estate-replayed-from").and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned()));
            out.push((m.partition(), m.payload().unwrap_or_default().to_vec(), replayed));
        }
    }
    out
}

fn heartbeat(tenant: &str, poller: &str, seq: i64, t: i64) -> Msg {
    Msg {
        topic: TOPIC.into(),
        key: Some(tenant.as_bytes().to_vec()),
        payload: format!(r#"{{"v":1,"type":"heartbeat","tenant":"{tenant}","poller":"{poller}","epoch":1,"seq":{seq},"time":{t},"spool_depth":0}}"#)
            .into_bytes(),
    }
}

fn event(tenant: &str, poller: &str, seq: i64, id: &str, t: i64) -> Msg {
    Msg { topic: TOPIC.into(), key: Some(tenant.as_bytes().to_vec()), payload: event_json(tenant, poller, seq, id, seq as usize, t).into_bytes() }
}

fn invalid_json(n: usize) -> Vec<Msg> {
    (0..n).map(|i| Msg { topic: TOPIC.into(), key: Some(b"acme".to_vec()), payload: format!("{{not json {i}").into_bytes() }).collect()
}

fn start_query(store: &Path, dir: &Path, http: u16) -> Child {
    let auth = dir.join("tokens.toml");
    std::fs::write(&auth, "[[token]]\ntoken = \"noc-secret\"\nrole = \"operator\"\n").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(["query", "--store", store.to_str().unwrap(), "--auth-file", auth.to_str().unwrap()])
        .args(["--http-addr", &format!("127.0.0.1:{http}"), "--flight-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--refresh-interval", "200ms", "--poller-late-after", "5m", "--poller-down-after", "30m"])
        .env("ESTATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("query.log")).unwrap())
        .spawn()
        .expect("spawning estate query");
    let start = Instant::now();
    while http_get(http, "/healthz").is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "query did not start: {}", std::fs::read_to_string(dir.join("query.log")).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn dlq_replay_of_fixed_records_stores_each_exactly_once_and_status_reports_the_estate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = d.join("store");
    let m = MockCluster::new(3).expect("mock cluster");
    for (t, p) in [(TOPIC, 2), ("estate.dlq", 2), ("estate.deduped", 1)] {
        m.create_topic(t, p, 3).unwrap();
    }
    let brokers = m.bootstrap_servers();
    let now = now_ms();

    // 12 good events and 3 with a gap in their seq (3 and 4 never sent);
    // 6 events two hours ahead (a poller with a skewed clock), rejected under
    // --max-future 1m; 2 unreadable messages.
    let mut msgs = Vec::new();
    let mut good_ids = HashSet::new();
    for seq in 1..=12 {
        let (tenant, id) = (if seq % 2 == 0 { "acme" } else { "globex" }, format!("good-{seq:02}"));
        msgs.push(event(tenant, &format!("{tenant}-good"), seq / 2 + seq % 2, &id, now - 3_600_000 + seq));
        good_ids.insert(format!("{tenant}/{id}"));
    }
    for seq in [1, 2, 5] {
        let id = format!("gap-{seq}");
        msgs.push(event("acme", "acme-gap", seq, &id, now - 3_600_000));
        good_ids.insert(format!("acme/{id}"));
    }
    let mut future_ids = HashSet::new();
    for seq in 1..=6 {
        let (tenant, id) = (if seq <= 3 { "acme" } else { "globex" }, format!("skewed-{seq}"));
        msgs.push(event(tenant, &format!("{tenant}-skewed"), if seq <= 3 { seq } else { seq - 3 }, &id, now + 2 * 3_600_000 + seq));
        future_ids.insert(format!("{tenant}/{id}"));
    }
    msgs.extend(invalid_json(2));
    produce(&brokers, &msgs);

    let mut ing = Ingest::start(&brokers, &store, "g-dlq-replay", &["--max-future", "1m"], d, 0);
    wait_for_logged(Duration::from_secs(90), "good events stored and rejects in the DLQ", &[&ing], || {
        events_count(&store) == good_ids.len() as i64 && metric_sum(&ing.metrics(), "estate_ingest_dlq_records_total") >= 8.0
    });

    // inspect: counts by reason and source topic, samples with coordinates.
    let dlq = ["--brokers", brokers.as_str(), "--timeout", "30s"];
    let inspect = |extra: &[&str]| {
        let mut a = vec!["dlq", "inspect", "--format", "json"];
        a.extend_from_slice(&dlq);
        a.extend_from_slice(extra);
        estate_json(&a)
    };
    let i = inspect(&[]);
    assert_eq!(i["complete"], true, "{i:#}");
    assert_eq!(i["read"], 8, "{i:#}");
    assert_eq!(i["by_reason"]["time_out_of_range"]["records"], 6, "{i:#}");
    assert_eq!(i["by_reason"]["time_out_of_range"]["distinct"], 6, "{i:#}");
    assert_eq!(i["by_reason"]["invalid_json"]["records"], 2, "{i:#}");
    assert_eq!(i["by_reason"].as_object().unwrap().len(), 2, "{i:#}");
    assert_eq!(i["by_source_topic"][TOPIC]["records"], 8, "{i:#}");
    let samples = i["by_reason"]["time_out_of_range"]["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3, "3 samples per reason by default");
    for s in samples {
        assert_eq!(s["source_topic"], TOPIC);
        assert!(s["source_partition"].as_i64().unwrap() < 2 && s["source_offset"].as_i64().unwrap() >= 0, "{s}");
        assert!(s["ingested_at"].as_str().unwrap().ends_with('Z'), "{s}");
        assert!(["acme", "globex"].contains(&s["key"].as_str().unwrap()), "{s}");
        assert!(s["payload"].as_str().unwrap().starts_with(r#"{"v":1,"type":"event""#), "{s}");
    }
    let only = inspect(&["--reason", "invalid_*", "--samples", "1", "--max-payload", "4"]);
    assert_eq!((only["read"].as_i64(), only["matched"].as_i64()), (Some(8), Some(2)), "{only:#}");
    assert_eq!(only["by_reason"]["invalid_json"]["samples"][0]["payload"], "{not…(+7 bytes)");
    let (ok, table, err) = estate(&[&["dlq", "inspect"][..], &dlq[..]].concat());
    assert!(ok, "{err}");
    assert!(table.contains("time_out_of_range") && table.contains("samples of invalid_json (2 of 2):"), "{table}");
    eprintln!("estate dlq inspect:\n{table}");
    // Settings from the [dlq] table of a config file; `samples` is inspect's only.
    let cfg = d.join("estate.toml");
    std::fs::write(&cfg, format!("[dlq]\nbrokers = \"{brokers}\"\ntimeout = \"30s\"\nsamples = 1\n")).unwrap();
    let cfg = cfg.to_str().unwrap();
    let from_file = estate_json(&["--config", cfg, "dlq", "inspect", "--format", "json"]);
    assert_eq!(from_file["by_reason"]["time_out_of_range"]["samples"].as_array().map(Vec::len), Some(1), "{from_file:#}");

    // The clock is fixed: ingest back to the default --max-future.
    assert!(ing.terminate().success(), "{}", ing.log_tail());
    let ing = Ingest::start(&brokers, &store, "g-dlq-replay", &[], d, 1);

    // A dry run lists and sends nothing; replay needs a --reason.
    let before = watermarks(&brokers, TOPIC, 2);
    let replay = |extra: &[&str]| {
        let mut a = vec!["dlq", "replay", "--format", "json"];
        a.extend_from_slice(&dlq);
        a.extend_from_slice(extra);
        estate_json(&a)
    };
    let dry = estate_json(&["--config", cfg, "dlq", "replay", "--format", "json", "--reason", "time_out_of_range", "--dry-run"]);
    assert_eq!((dry["replayed"].as_i64(), dry["planned"].as_array().map(Vec::len)), (Some(6), Some(6)), "{dry:#}");
    assert_eq!(watermarks(&brokers, TOPIC, 2), before, "a dry run sends nothing");
    let (ok, _, err) = estate(&[&["dlq", "replay"][..], &dlq[..]].concat());
    assert!(!ok && err.contains("needs at least one --reason"), "{err}");

    // Replay twice: each fixed event is stored once; the unreadable ones stay put.
    for round in 1..=2 {
        let r = replay(&["--reason", "time_out_of_range"]);
        assert_eq!(r["replayed"], 6, "round {round}: {r:#}");
        assert_eq!(r["by_target"][TOPIC], 6, "round {round}: {r:#}");
        assert_eq!(r["skipped_copies"], 0, "round {round}: {r:#}");
        let want = (good_ids.len() + future_ids.len()) as i64;
        wait_for_logged(Duration::from_secs(60), "the replayed events to be processed", &[&ing], || {
            let m = ing.metrics();
            events_count(&store) >= want && metric_sum(&m, "estate_ingest_events_in_total") >= (6 * round) as f64
        });
        if round == 2 {
            wait_for_logged(Duration::from_secs(60), "the second replay to be dropped as duplicates", &[&ing], || {
                metric_sum(&ing.metrics(), "estate_ingest_duplicates_total") >= 6.0
            });
        }
    }
    let after = watermarks(&brokers, TOPIC, 2);
    assert_eq!(after.iter().sum::<i64>() - before.iter().sum::<i64>(), 12, "two replays of 6 records");
    let n = events_count(&store);
    let distinct = sql_i64(&store, "SELECT count(*) FROM (SELECT DISTINCT tenant, event_id FROM events)");
    assert_eq!((n, distinct), ((good_ids.len() + future_ids.len()) as i64, n), "{}", sql_text(&store, "SELECT tenant, event_id, src_partition, src_offset FROM events ORDER BY 1, 2"));
    let per_id = sql(&store, "SELECT tenant || '/' || event_id AS id, count(*) AS n FROM events GROUP BY 1");
    let mut stored: HashMap<String, i64> = HashMap::new();
    for b in &per_id {
        let ids = deltalake::arrow::compute::cast(b.column(0), &deltalake::arrow::datatypes::DataType::Utf8).unwrap();
        let ids = ids.as_any().downcast_ref::<deltalake::arrow::array::StringArray>().unwrap();
        let ns = b.column(1).as_any().downcast_ref::<deltalake::arrow::array::Int64Array>().unwrap();
        for r in 0..b.num_rows() {
            stored.insert(ids.value(r).to_owned(), ns.value(r));
        }
    }
    for id in good_ids.iter().chain(&future_ids) {
        assert_eq!(stored.get(id), Some(&1), "{id} stored exactly once");
    }
    // The good ones are untouched: still stored from their original offsets.
    let good_rows_from_first_run = sql_i64(&store, "SELECT count(*) FROM events WHERE event_id LIKE 'good-%' OR event_id LIKE 'gap-%'");
    assert_eq!(good_rows_from_first_run, good_ids.len() as i64);
    // Each replayed message went to the partition of its original, with the header.
    let all = read_all(&brokers, TOPIC, 2);
    let replayed: Vec<_> = all.iter().filter(|x| x.2.is_some()).collect();
    assert_eq!(replayed.len(), 12);
    for (p, payload, from) in &replayed {
        let orig = all.iter().find(|x| x.2.is_none() && x.1 == *payload).expect("the original message");
        assert_eq!(orig.0, *p, "replayed to the source partition");
        assert!(from.as_deref().unwrap().starts_with("estate.dlq/"), "{from:?}");
    }
    // Nothing went back to the DLQ: the cause was fixed.
    let i = inspect(&[]);
    assert_eq!((i["by_reason"]["time_out_of_range"]["records"].as_i64(), i["read"].as_i64()), (Some(6), Some(8)), "{i:#}");

    // estate status against the running ingest and a query service.
    let now = now_ms();
    produce(&brokers, &[heartbeat("acme", "acme-good", 7, now), heartbeat("globex", "globex-late", 1, now - 600_000)]);
    wait_for_logged(Duration::from_secs(60), "heartbeats stored", &[&ing], || {
        store.join("heartbeats/_delta_log").exists() && sql_i64(&store, "SELECT count(*) FROM heartbeats") == 2
    });
    let http = free_port();
    let mut query = start_query(&store, d, http);
    let query_url = format!("http://127.0.0.1:{http}");
    let metrics_url = format!("http://127.0.0.1:{}", ing.metrics_port);
    let status = |extra: &[&str]| {
        let mut a = vec!["status", "--format", "json", "--query-url", &query_url, "--token", "noc-secret", "--ingest-metrics", &metrics_url, "--timeout", "20s"];
        a.extend_from_slice(extra);
        estate(&a)
    };
    // Lag comes from librdkafka statistics every 5 s, for the partitions
    // this consumer has committed since it started: wait until it is 0.
    let deadline = Instant::now() + Duration::from_secs(60);
    let s: Value = loop {
        let (ok, out, err) = status(&["--sample", "500ms"]);
        assert!(ok, "status failed:\n{out}\n{err}");
        let s: Value = serde_json::from_str(&out).unwrap();
        let i = &s["ingest"][0];
        let lag = i["lag"].as_array().unwrap();
        if lag.iter().any(|x| x["topic"] == TOPIC) && i["lag_total"] == 0 {
            assert_eq!(lag.len() as i64 + i["lag_unknown"].as_i64().unwrap(), 2, "{s:#}");
            break s;
        }
        assert!(Instant::now() < deadline, "consumer lag never reported as 0:\n{s:#}");
        std::thread::sleep(Duration::from_secs(1));
    };
    let q = &s["query"];
    assert_eq!((q["pollers"]["up"].as_i64(), q["pollers"]["late"].as_i64(), q["pollers"]["down"].as_i64()), (Some(1), Some(1), Some(2)), "{q:#}");
    let not_up: HashSet<String> = q["pollers"]["not_up"].as_array().unwrap().iter().map(|p| format!("{}/{}", p["poller"].as_str().unwrap(), p["status"].as_str().unwrap())).collect();
    assert_eq!(not_up, ["globex-late/late", "acme-skewed/down", "globex-skewed/down"].map(String::from).into(), "{q:#}");
    assert_eq!((q["loss"]["gaps"].as_i64(), q["loss"]["tails"].as_i64(), q["loss"]["missing"].as_i64()), (Some(1), Some(0), Some(2)), "{q:#}");
    assert_eq!(q["loss"]["worst"][0]["poller"], "acme-gap");
    let fresh = q["freshness"].as_array().unwrap();
    assert_eq!(fresh.iter().map(|f| f["tenant"].as_str().unwrap()).collect::<Vec<_>>(), ["acme", "globex"], "{q:#}");
    for f in fresh {
        let age = f["age_seconds"].as_f64().unwrap();
        assert!((0.0..600.0).contains(&age), "{f}");
    }
    assert!(s["unavailable"].as_array().unwrap().is_empty(), "{s:#}");
    assert_eq!(s["ingest"][0]["partitions_assigned"], 2.0, "{s:#}");
    let (ok, table, err) =
        estate(&["status", "--query-url", &query_url, "--token", "noc-secret", "--ingest-metrics", &metrics_url, "--sample", "200ms"]);
    assert!(ok && table.contains("pollers: 1 up, 1 late, 2 down") && table.contains("loss audit: 1 gaps, 0 lost tails, 2 messages missing"), "{table}\n{err}");
    eprintln!("estate status:\n{table}");

    // The DLQ and event rates: 3 rejects and 4 events arrive within the sample.
    let child = Command::new(env!("CARGO_BIN_EXE_estate"))
        .args(["status", "--format", "json", "--ingest-metrics", &metrics_url, "--sample", "6s"])
        .env("ESTATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let mut more = invalid_json(3);
    more.extend((8..=11).map(|seq| event("acme", "acme-good", seq, &format!("late-{seq}"), now)));
    produce(&brokers, &more);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rates = &r["ingest"][0]["rates"];
    assert_eq!(rates["dlq_records"], 3.0, "{r:#}");
    let secs = rates["seconds"].as_f64().unwrap();
    assert!((5.5..10.0).contains(&secs), "{r:#}");
    assert!((rates["dlq_per_s"].as_f64().unwrap() - 3.0 / secs).abs() < 1e-9, "{r:#}");
    assert!((rates["events_in_per_s"].as_f64().unwrap() - 7.0 / secs).abs() < 1e-9, "{r:#}");
    assert!((rates["events_stored_per_s"].as_f64().unwrap() - 4.0 / secs).abs() < 1e-9, "{r:#}");
    assert!(r["query"].is_null());

    // An unreachable source: what is known is printed, the rest marked, exit non-zero.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (ok, out, err) = status(&["--sample", "200ms", "--ingest-metrics", &dead]);
    assert!(!ok, "status must fail with a source down:\n{out}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["ingest"].as_array().unwrap().len(), 2);
    assert_eq!(s["ingest"][0]["lag_total"], 0, "{s:#}");
    assert!(s["ingest"][1]["error"].as_str().unwrap().contains("connecting"), "{s:#}");
    assert_eq!(s["query"]["pollers"]["up"], 1, "{s:#}");
    assert!(err.contains("1 source(s) unavailable") && err.contains(&dead), "{err}");
    let _ = query.kill();
    let _ = query.wait();
    let (ok, table, err) = estate(&["status", "--query-url", &query_url, "--token", "noc-secret", "--ingest-metrics", &metrics_url, "--sample", "200ms", "--timeout", "5s"]);
    assert!(!ok && table.contains("pollers: UNAVAILABLE") && table.contains("UNAVAILABLE:\n  query service"), "{table}\n{err}");
    assert!(table.contains("partitions assigned 2, consumer lag"), "{table}");
}
