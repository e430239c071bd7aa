//! `estate ingest` end to end: exactly once, crashes, rebalances, store
//! faults, broker outages and bad input.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;

use crate::harness::*;

const TOPIC: &str = "estate.events";
const TENANTS: [&str; 3] = ["acme", "globex", "initech"];

/// A generated workload: messages and the distinct event ids they carry.
struct Workload {
    msgs: Vec<Msg>,
    distinct: HashSet<String>,
}

/// `n` messages, a `dup_ratio` share of which re-send an earlier event_id
/// from a mirror poller (with the mirror's own seq).
fn workload(n: usize, dup_ratio: f64, seed: u64) -> Workload {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut seqs: HashMap<String, i64> = HashMap::new();
    let mut msgs = Vec::with_capacity(n);
    let mut distinct = HashSet::new();
    let mut ids: Vec<(usize, String)> = Vec::new();
    let base = now_ms() - 3_600_000;
    for i in 0..n {
        let dup = !ids.is_empty() && rng.random_bool(dup_ratio);
        let (tenant_i, id, poller) = if dup {
            let (t, id) = ids[rng.random_range(0..ids.len())].clone();
            (t, id, format!("mirror-{}", TENANTS[t]))
        } else {
            let t = i % TENANTS.len();
            let id = format!("{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed);
            ids.push((t, id.clone()));
            distinct.insert(format!("{}/{id}", TENANTS[t]));
            (t, id, format!("poller-{}-{}", TENANTS[t], i % 4))
        };
        let tenant = TENANTS[tenant_i];
        let seq = seqs.entry(poller.clone()).or_insert(0);
        *seq += 1;
        let payload = event_json(tenant, &poller, *seq, &id, i % 500, base + i as i64);
        msgs.push(Msg { topic: TOPIC.into(), key: Some(tenant.as_bytes().to_vec()), payload: payload.into_bytes() });
    }
    Workload { msgs, distinct }
}

/// A tansu broker process with the estate topics. Used where volume matters:
/// the mock cluster deletes old log segments of busy partitions.
fn tansu_with_topics(dir: &Path, partitions: i32) -> Tansu {
    let t = Tansu::start(&dir.join("tansu"));
    t.create_topics(&[(TOPIC, partitions), ("estate.dlq", 1), ("estate.deduped", 2)]);
    t
}

fn mock(partitions: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let m = MockCluster::new(3).expect("mock cluster");
    for (t, p) in [(TOPIC, partitions), ("estate.dlq", 1), ("estate.deduped", 2)] {
        m.create_topic(t, p, 3).expect("create topic");
    }
    m
}

/// The exactly-once invariants over the stored events.
fn assert_exact(store: &Path, w: &Workload) {
    let rows = events_count(store);
    let distinct = sql_i64(store, "SELECT count(*) FROM (SELECT DISTINCT tenant, event_id FROM events)");
    assert_eq!(distinct as usize, w.distinct.len(), "distinct stored events");
    assert_eq!(rows as usize, w.distinct.len(), "rows = distinct events (no event stored twice)");
    let seq_dups = sql_i64(
        store,
        "SELECT count(*) FROM (SELECT tenant, poller, epoch, seq FROM events GROUP BY 1,2,3,4 HAVING count(*) > 1)",
    );
    assert_eq!(seq_dups, 0, "every (tenant, poller, epoch, seq) appears once");
    // Every offered message is accounted for in receipts: stored + duplicates covers all.
    let accounted = sql_i64(store, "SELECT sum(stored) + sum(duplicates) + sum(rejected) FROM receipts");
    assert_eq!(accounted as usize, w.msgs.len(), "receipts account for every message exactly once");
    let gaps = sql_i64(store, "SELECT count(*) FROM receipts r WHERE seq_end < seq_start");
    assert_eq!(gaps, 0);
}

fn wait_for_all(store: &Path, w: &Workload, secs: u64, ingests: &[&Ingest]) {
    let want = w.distinct.len() as i64;
    let mut last = -1;
    wait_for_logged(Duration::from_secs(secs), "all distinct events to be stored", ingests, || {
        let n = events_count(store);
        if n != last {
            last = n;
            if n > 0 && std::env::var_os("ESTATE_TEST_DEBUG").is_some() {
                eprintln!("{}", sql_text(store, "SELECT src_partition, count(*), min(src_offset), max(src_offset) FROM events GROUP BY 1 ORDER BY 1"));
            }
        }
        if n > want {
            let logs: Vec<String> = ingests.iter().map(|i| i.log_tail()).collect();
            panic!("stored {n} rows but only {want} distinct events exist\n{}", logs.join("\n---\n"));
        }
        n == want && receipts_total(store) == w.msgs.len() as i64
    });
}

fn receipts_total(store: &Path) -> i64 {
    if !store.join("receipts/_delta_log").exists() {
        return 0;
    }
    sql_i64(store, "SELECT coalesce(sum(stored) + sum(duplicates) + sum(rejected), 0) FROM receipts")
}

#[test]
fn exactly_once_with_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tansu = tansu_with_topics(dir.path(), 4);
    let brokers = tansu.brokers();
    let w = workload(200_000, 0.05, 1);
    produce(&brokers, &w.msgs);
    // The deduplicated stream is checked on the mock cluster (DLQ test):
    // publishing it to tansu runs at ~1k records/s and would dominate here.
    let ing = Ingest::start(&brokers, &store, "g-exact", &["--flush-max-rows", "20000", "--deduped-topic", ""], dir.path(), 0);
    wait_for_all(&store, &w, 240, &[&ing]);
    assert_exact(&store, &w);
    // Metrics say the same.
    // Counters are published at the end of each flush, just after the commit.
    let dups = w.msgs.len() - w.distinct.len();
    wait_for_logged(Duration::from_secs(30), "duplicate counter", &[&ing], || {
        metric_sum(&ing.metrics(), "estate_ingest_duplicates_total") as usize == dups
    });
    let text = ing.metrics();
    assert_eq!(metric_sum(&text, "estate_ingest_events_in_total") as usize, w.msgs.len(), "{text}");
    assert!(metric_sum(&text, "estate_ingest_flushes_total") >= 1.0);
    // SIGTERM: flush, commit, leave the group, exit 0.
    let mut ing = ing;
    let status = ing.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}\n{}", ing.log_tail());
}

/// Consumes `topic` from the start and returns `tenant/event_id` of each record.
fn consume_ids(brokers: &str, topic: &str, want: usize, timeout: Duration) -> HashSet<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("check-{}", rand::random::<u32>()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut ids = HashSet::new();
    let deadline = std::time::Instant::now() + timeout;
    while ids.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let key = std::str::from_utf8(m.key().unwrap()).unwrap();
            assert_eq!(v["tenant"], key, "deduped records are keyed by tenant");
            ids.insert(format!("{}/{}", v["tenant"].as_str().unwrap(), v["event_id"].as_str().unwrap()));
        }
    }
    ids
}

#[test]
fn repeated_sigkill_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let m = mock(4);
    let brokers = m.bootstrap_servers();
    // Small volume: the mock cluster deletes old segments of busy partitions.
    let w = workload(15_000, 0.05, 2);
    let producer = {
        let brokers = brokers.clone();
        let msgs = w.msgs.clone();
        std::thread::spawn(move || {
            for chunk in msgs.chunks(1_000) {
                produce(&brokers, chunk);
                std::thread::sleep(Duration::from_millis(600));
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..10 {
        // A fresh group per incarnation: recovery must come from the tables'
        // watermarks alone (Kafka offsets are only a hint), and dead members
        // do not hold partitions until their session times out.
        let group = format!("g-kill-{round}");
        let mut ing = Ingest::start(&brokers, &store, &group, &["--flush-max-rows", "1000"], dir.path(), round);
        std::thread::sleep(Duration::from_millis(rng.random_range(700..2500)));
        ing.kill();
    }
    producer.join().unwrap();
    let ing = Ingest::start(&brokers, &store, "g-kill-final", &[], dir.path(), 99);
    wait_for_all(&store, &w, 240, &[&ing]);
    assert_exact(&store, &w);
}

/// Lines of an ingest log that contain `what`.
fn log_lines(ing: &Ingest, what: &str) -> usize {
    std::fs::read_to_string(&ing.log).unwrap_or_default().lines().filter(|l| l.contains(what)).count()
}

fn assignments(ing: &Ingest) -> usize {
    log_lines(ing, "partition assigned")
}

fn revocations(ing: &Ingest) -> usize {
    log_lines(ing, "partitions revoked")
}

/// Two instances in one group share the partitions; one is SIGKILLed mid-run
/// and the survivor takes its partitions over (after the session timeout);
/// the killed one then comes back and the survivor hands partitions back
/// through a revocation (flush, commit, let go). The result stays exact.
#[test]
fn rebalance_after_a_member_dies_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let m = mock(6);
    let brokers = m.bootstrap_servers();
    // Small volume: the mock cluster deletes old segments of busy partitions.
    let w = workload(18_000, 0.05, 5);
    let chunks: Vec<Vec<Msg>> = w.msgs.chunks(1_000).map(<[Msg]>::to_vec).collect();
    let produce_next = |i: usize| produce(&brokers, &chunks[i]);
    let group = "g-rebalance";
    let mut a = Ingest::start(&brokers, &store, group, &[], dir.path(), 0);
    let mut b = Ingest::start(&brokers, &store, group, &[], dir.path(), 1);
    let mut next = 0;
    // Both members hold partitions and have consumed from them.
    wait_for_logged(Duration::from_secs(120), "both members consuming", &[&a, &b], || {
        if next < 6 {
            produce_next(next);
            next += 1;
        }
        [&a, &b].iter().all(|i| metric_sum(&i.metrics(), "estate_ingest_events_in_total") > 0.0)
    });
    let a_before = assignments(&a);
    b.kill();
    // The survivor is assigned b's partitions once b's session times out.
    wait_for_logged(Duration::from_secs(90), "the survivor to take the dead member's partitions", &[&a], || {
        if next < 12 {
            produce_next(next);
            next += 1;
        }
        assignments(&a) > a_before
    });
    // b comes back: a gives some partitions up (revocation path), b resumes them from the tables.
    let a_revoked = revocations(&a);
    let b = Ingest::start(&brokers, &store, group, &[], dir.path(), 2);
    wait_for_logged(Duration::from_secs(90), "the returning member to be assigned partitions", &[&a, &b], || assignments(&b) > 0);
    while next < chunks.len() {
        produce_next(next);
        next += 1;
    }
    wait_for_all(&store, &w, 240, &[&a, &b]);
    assert_exact(&store, &w);
    assert!(revocations(&a) > a_revoked, "the survivor went through a revocation when b returned\n{}", a.log_tail());
    a.terminate();
}

#[test]
fn store_faults_do_not_lose_or_double() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tansu = tansu_with_topics(dir.path(), 4);
    let brokers = tansu.brokers();
    let w = workload(40_000, 0.05, 3);
    produce(&brokers, &w.msgs);
    let ing = Ingest::start(
        &brokers,
        &store,
        "g-faults",
        &["--test-inject-store-faults", "fail=0.1,delay=40ms,delay_share=0.2", "--flush-max-rows", "1000", "--deduped-topic", ""],
        dir.path(),
        0,
    );
    wait_for_all(&store, &w, 240, &[&ing]);
    assert_exact(&store, &w);
    assert!(ing.child.id() > 0);
    assert!(ing.log_tail().contains("injected") || std::fs::read_to_string(&ing.log).unwrap().contains("injected"),
        "faults were really injected");
}

#[test]
fn broker_outage_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let m = mock(4);
    let brokers = m.bootstrap_servers();
    // Small volume: the mock cluster deletes old segments of busy partitions.
    let w = workload(16_000, 0.05, 4);
    produce(&brokers, &w.msgs[..6_000]);
    let ing = Ingest::start(&brokers, &store, "g-outage", &[], dir.path(), 0);
    wait_for_logged(Duration::from_secs(120), "first events stored", &[&ing], || events_count(&store) > 0);
    for b in 1..=3 {
        m.broker_down(b).unwrap();
    }
    std::thread::sleep(Duration::from_secs(10));
    for b in 1..=3 {
        m.broker_up(b).unwrap();
    }
    produce(&brokers, &w.msgs[6_000..]);
    wait_for_all(&store, &w, 240, &[&ing]);
    assert_exact(&store, &w);
}

/// One message per DLQ reason, plus valid events around them.
#[test]
fn bad_input_goes_to_the_dlq_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let m = mock(2);
    m.create_topic("estate.events.acme", 1, 3).unwrap();
    let brokers = m.bootstrap_servers();
    let now = now_ms();
    let ok = |seq: i64| event_json("acme", "p1", seq, &format!("ok-{seq}"), 1, now);
    let with = |seq: i64, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&ok(seq)).unwrap();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let key = Some(b"acme".to_vec());
    let mk = |topic: &str, key: Option<Vec<u8>>, payload: Vec<u8>| Msg { topic: topic.into(), key, payload };
    let cases: Vec<(&str, Msg)> = vec![
        ("invalid_json", mk(TOPIC, key.clone(), b"{not json".to_vec())),
        ("invalid_utf8", mk(TOPIC, key.clone(), vec![b'{', 0xff, 0xfe, b'}'])),
        ("unsupported_version", mk(TOPIC, key.clone(), with(3, &|v| v["v"] = 2.into()))),
        ("unsupported_type", mk(TOPIC, key.clone(), with(4, &|v| v["type"] = "alarm".into()))),
        ("missing_field:node", mk(TOPIC, key.clone(), with(5, &|v| { v.as_object_mut().unwrap().remove("node"); }))),
        ("invalid_field:seq", mk(TOPIC, key.clone(), with(6, &|v| v["seq"] = "six".into()))),
        ("invalid_level", mk(TOPIC, key.clone(), with(7, &|v| v["level"] = "Critical2".into()))),
        ("invalid_state", mk(TOPIC, key.clone(), with(8, &|v| v["state"] = "sideways".into()))),
        ("tenant_mismatch", mk(TOPIC, key.clone(), with(9, &|v| v["tenant"] = "globex".into()))),
        ("invalid_tenant", mk(TOPIC, Some(b"../Acme".to_vec()), with(10, &|v| { v.as_object_mut().unwrap().remove("tenant"); }))),
        ("missing_key", mk(TOPIC, None, ok(11).into_bytes())),
        ("too_large", mk(TOPIC, key.clone(), with(12, &|v| v["details"] = "x".repeat(5000).into()))),
        ("time_out_of_range", mk(TOPIC, key.clone(), with(13, &|v| v["time"] = 631_152_000_000i64.into()))),
        ("time_out_of_range", mk(TOPIC, key.clone(), with(14, &|v| v["time"] = (now + 30 * 86_400_000).into()))),
        ("tenant_mismatch", mk("estate.events.acme", None, with(15, &|v| v["tenant"] = "globex".into()))),
    ];
    let mut msgs = vec![mk(TOPIC, key.clone(), ok(1).into_bytes()), mk(TOPIC, key.clone(), ok(2).into_bytes())];
    msgs.extend(cases.iter().map(|(_, m)| m.clone()));
    msgs.push(mk(TOPIC, key.clone(), ok(16).into_bytes()));
    msgs.push(mk("estate.events.acme", None, ok(17).into_bytes()));
    produce(&brokers, &msgs);
    let ing = Ingest::start(&brokers, &store, "g-dlq", &["--max-message-bytes", "4096"], dir.path(), 0);
    wait_for_logged(Duration::from_secs(120), "valid events stored", &[&ing], || events_count(&store) == 4);

    // Every reason, with the original bytes and the source coordinates.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["estate.dlq"]).unwrap();
    let mut got: Vec<(String, Vec<u8>, String)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < cases.len() && std::time::Instant::now() < deadline {
        if let Some(Ok(rec)) = c.poll(Duration::from_millis(200)) {
            let h = rec.headers().expect("DLQ records have headers");
            let get = |name: &str| {
                h.iter().find(|x| x.key == name).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_else(|| panic!("missing header {name}"))
            };
            let reason = get("estate-reason");
            let src = format!("{}/{}/{}", get("estate-source-topic"), get("estate-source-partition"), get("estate-source-offset"));
            assert!(!get("estate-ingested-at").is_empty());
            got.push((reason, rec.payload().unwrap_or(&[]).to_vec(), src));
        }
    }
    assert_eq!(got.len(), cases.len(), "one DLQ record per bad message: {got:?}");
    for (reason, msg) in &cases {
        assert!(
            got.iter().any(|(r, p, _)| r == reason && *p == msg.payload),
            "reason {reason} with original bytes not found in DLQ"
        );
    }
    // The deduplicated stream holds exactly the stored events, keyed by tenant.
    let want: HashSet<String> = [1, 2, 16, 17].iter().map(|s| format!("acme/ok-{s}")).collect();
    assert_eq!(consume_ids(&brokers, "estate.deduped", want.len(), Duration::from_secs(60)), want);
    let srcs: HashSet<&String> = got.iter().map(|g| &g.2).collect();
    assert_eq!(srcs.len(), cases.len(), "distinct source coordinates");
    wait_for_logged(Duration::from_secs(30), "rejected counter", &[&ing], || {
        metric_sum(&ing.metrics(), "estate_ingest_rejected_total") as usize == cases.len()
    });
    // Rejects with a readable seq are in receipts, so the loss audit sees no gap.
    let rejected = sql_i64(&store, "SELECT sum(rejected) FROM receipts WHERE tenant = 'acme' AND poller = 'p1'");
    assert_eq!(rejected, 10, "{}", sql_text(&store, "SELECT * FROM receipts"));
}
