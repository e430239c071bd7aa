//! `estate poller` end to end: the real binary, real spool files, a real
//! broker process (tansu over TCP, durable on disk; a broker outage is a
//! SIGKILL of that process and a restart) and, for the mirror pair, the
//! real ingest into a real Delta store.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::message::Message;

use crate::harness::*;

const TOPIC: &str = "estate.events";
const TENANT: &str = "acme";
/// NMIS event times of the test lines: line `i` happens at `BASE_S + i` seconds.
const BASE_S: i64 = 1_790_000_000;

/// A tansu broker process with data in `dir`/broker and the topics the
/// tests use.
fn broker(dir: &Path) -> Tansu {
    let t = Tansu::start(&dir.join("broker"));
    t.create_topics(&[(TOPIC, 2), ("estate.dlq", 1), ("estate.deduped", 1)]);
    t
}

/// A running `estate poller`.
struct Poller {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl Poller {
    fn start(brokers: &str, id: &str, spool: &Path, input: &[&str], extra: &[&str], log_dir: &Path, n: usize) -> Poller {
        let metrics_port = free_port();
        let log = log_dir.join(format!("poller-{id}-{n}.log"));
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_estate"))
            .arg("poller")
            .args(["--brokers", brokers, "--tenant", TENANT, "--poller-id", id])
            .arg("--spool-dir")
            .arg(spool)
            .args(input)
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}"), "--poll-interval", "20ms"])
            .args(extra)
            .env("ESTATE_LOG", std::env::var("ESTATE_TEST_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawning estate poller");
        Poller { child, metrics_port, log }
    }

    fn nmis(brokers: &str, id: &str, spool: &Path, log_file: &Path, extra: &[&str], dir: &Path, n: usize) -> Poller {
        let f = log_file.to_str().unwrap();
        Poller::start(brokers, id, spool, &["--nmis-log", f], extra, dir, n)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let s = self.log_text();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let text = http_get(self.metrics_port, "/metrics")?;
        text.lines().any(|l| l.starts_with(name)).then(|| metric_sum(&text, name))
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One NMIS `event.log` line; its details end with `line <i>`.
fn nmis_line(i: usize) -> String {
    let (event, level) = if i.is_multiple_of(2) { ("Interface Down", "Major") } else { ("Interface Up", "Normal") };
    format!("{},node-{:03},{event},{level},GigabitEthernet0/{},Uplink to dist-sw-02 line {i}\n", BASE_S + i as i64, i % 97, i % 48)
}

/// Appends lines `range` to the log, opening, appending and closing like NMIS.
fn write_lines(path: &Path, range: std::ops::Range<usize>) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    let text: String = range.map(nmis_line).collect();
    f.write_all(text.as_bytes()).unwrap();
}

/// A record as it landed in Kafka.
#[derive(Debug, Clone)]
struct Landed {
    partition: i32,
    offset: i64,
    v: serde_json::Value,
}

impl Landed {
    fn poller(&self) -> &str {
        self.v["poller"].as_str().unwrap_or("")
    }
    fn seq(&self) -> i64 {
        self.v["seq"].as_i64().unwrap()
    }
    fn line(&self) -> Option<usize> {
        self.v["details"].as_str()?.rsplit("line ").next()?.parse().ok()
    }
}

/// Reads the whole topic until `done` holds for what has landed, or panics
/// after `timeout`.
fn read_topic(brokers: &str, timeout: Duration, pollers: &[&Poller], done: impl Fn(&[Landed]) -> bool) -> Vec<Landed> {
    read_topic_named(brokers, TOPIC, 2, timeout, pollers, done)
}

fn read_topic_named(
    brokers: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
    pollers: &[&Poller],
    done: impl Fn(&[Landed]) -> bool,
) -> Vec<Landed> {
    let c = reader_from_start(brokers, topic, partitions);
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        while let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(m.key(), Some(TENANT.as_bytes()), "records are keyed by tenant");
            got.push(Landed { partition: m.partition(), offset: m.offset(), v });
        }
        if done(&got) {
            return got;
        }
        if Instant::now() > deadline {
            let tails: Vec<String> = pollers.iter().map(|p| format!("--- {}\n{}", p.log.display(), p.log_tail())).collect();
            panic!("timed out after {timeout:?}: {} records landed\n{}", got.len(), tails.join("\n"));
        }
    }
}

fn lines_of(got: &[Landed], poller: &str) -> Vec<usize> {
    got.iter().filter(|l| l.poller() == poller && l.v["type"] == "event").filter_map(Landed::line).collect()
}

/// Every line in `want` landed exactly once from `poller`, and the poller's
/// records (events and heartbeats) carry seq 1, 2, 3 … in partition order,
/// with no gap and no duplicate, within one epoch.
fn assert_exactly_once_in_order(got: &[Landed], poller: &str, want: std::ops::Range<usize>) {
    let mut mine: Vec<&Landed> = got.iter().filter(|l| l.poller() == poller).collect();
    mine.sort_by_key(|l| (l.partition, l.offset));
    assert!(mine.iter().all(|l| l.partition == mine[0].partition), "one partition per poller");
    let epochs: HashSet<i64> = mine.iter().map(|l| l.v["epoch"].as_i64().unwrap()).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    let seqs: Vec<i64> = mine.iter().map(|l| l.seq()).collect();
    let expect: Vec<i64> = (1..=seqs.len() as i64).collect();
    if seqs != expect {
        let bad = seqs.iter().zip(&expect).position(|(a, b)| a != b).unwrap_or(seqs.len());
        panic!("seq not 1..n in order at index {bad}: {:?}", &seqs[bad.saturating_sub(3)..(bad + 5).min(seqs.len())]);
    }
    let mut lines = lines_of(got, poller);
    let n = lines.len();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), n, "no line delivered twice");
    assert_eq!(lines, want.collect::<Vec<_>>(), "every line delivered");
}

fn has_lines(poller: &'static str, n: usize) -> impl Fn(&[Landed]) -> bool {
    move |got| lines_of(got, poller).into_iter().collect::<HashSet<_>>().len() >= n
}

/// The broker process SIGKILLed and down for 30 s while events flow: the
/// spool holds them, and once it is back every event arrives once, in seq
/// order. (A real broker process, tansu, durable on disk.)
#[test]
fn broker_outage_delivers_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = broker(dir.path());
    let brokers = broker.brokers();
    let log = dir.path().join("event.log");
    write_lines(&log, 0..300);
    let p = Poller::nmis(&brokers, "p-outage", &dir.path().join("spool"), &log, &["--heartbeat-interval", "2s"], dir.path(), 0);
    read_topic(&brokers, Duration::from_secs(60), &[&p], has_lines("p-outage", 300));
    broker.kill();
    let outage = Instant::now();
    let mut next = 300;
    while outage.elapsed() < Duration::from_secs(30) {
        write_lines(&log, next..next + 50);
        next += 50;
        std::thread::sleep(Duration::from_millis(500));
    }
    let depth = p.metric("estate_poller_spool_depth").unwrap_or(0.0);
    assert!(depth >= (next - 300) as f64, "events wait in the spool during the outage: depth {depth}\n{}", p.log_tail());
    broker.restart();
    write_lines(&log, next..next + 300);
    next += 300;
    let got = read_topic(&brokers, Duration::from_secs(90), &[&p], has_lines("p-outage", next));
    assert_exactly_once_in_order(&got, "p-outage", 0..next);
    assert!(got.iter().any(|l| l.poller() == "p-outage" && l.v["type"] == "heartbeat" && l.v["spool_depth"].as_i64() > Some(0)),
        "heartbeats carry the spool depth");
}

/// SIGKILLed 10 times mid-stream and restarted: seq continuous, no loss, no
/// duplicate (records delivered just before a kill are found in the topic).
#[test]
fn sigkill_ten_times_keeps_seq_continuous() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let brokers = b.brokers();
    let log = dir.path().join("event.log");
    let spool = dir.path().join("spool");
    let total = 4_000;
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for chunk in (0..total).step_by(100) {
                write_lines(&log, chunk..chunk + 100);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for round in 0..10 {
        let mut p = Poller::nmis(&brokers, "p-kill", &spool, &log, &["--heartbeat-interval", "700ms"], dir.path(), round);
        std::thread::sleep(Duration::from_millis(rng.random_range(400..1500)));
        p.kill();
    }
    writer.join().unwrap();
    let p = Poller::nmis(&brokers, "p-kill", &spool, &log, &[], dir.path(), 99);
    let got = read_topic(&brokers, Duration::from_secs(90), &[&p], has_lines("p-kill", total));
    assert_exactly_once_in_order(&got, "p-kill", 0..total);
}

/// Rename+create and copy-truncate rotations while lines are written:
/// every line is delivered once; malformed lines are counted and logged
/// with their line number.
#[test]
fn log_rotation_delivers_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let brokers = b.brokers();
    let log = dir.path().join("event.log");
    let p = Poller::nmis(&brokers, "p-rotate", &dir.path().join("spool"), &log, &[], dir.path(), 0);
    for c in (0..300).step_by(30) {
        write_lines(&log, c..c + 30);
        std::thread::sleep(Duration::from_millis(15));
    }
    // Two malformed lines: line 301 and 302 of this file.
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"garbage without fields\n1790000000,n1,Node Down,Loud,,bad level\n").unwrap();
    write_lines(&log, 300..400);
    // rename + create
    std::fs::rename(&log, dir.path().join("event.log.1")).unwrap();
    for c in (400..700).step_by(30) {
        write_lines(&log, c..c + 30);
        std::thread::sleep(Duration::from_millis(15));
    }
    // copy-truncate, with lines written just before it that the agent has
    // most likely not read yet: they must come from the copy.
    write_lines(&log, 700..760);
    std::fs::copy(&log, dir.path().join("event.log.2")).unwrap();
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
    for c in (760..1200).step_by(40) {
        write_lines(&log, c..c + 40);
        std::thread::sleep(Duration::from_millis(15));
    }
    let got = read_topic(&brokers, Duration::from_secs(60), &[&p], has_lines("p-rotate", 1200));
    assert_exactly_once_in_order(&got, "p-rotate", 0..1200);
    wait_for(Duration::from_secs(10), "malformed counter", || p.metric("estate_poller_malformed_lines_total") == Some(2.0));
    let text = p.log_text();
    assert!(text.contains("line=301") && text.contains("line=302") && text.contains("malformed"), "{}", p.log_tail());
    assert!(text.contains("rename + create") && text.contains("copy-truncate"), "{}", p.log_tail());
}

/// Spool at its limit with the broker away: input is throttled, nothing is
/// dropped, and it drains when the broker returns.
#[test]
fn spool_full_throttles_input_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = broker(dir.path());
    let brokers = b.brokers();
    b.kill();
    let log = dir.path().join("event.log");
    let total = 3_000; // ~800 KB of events against a 64 KiB spool
    write_lines(&log, 0..total);
    let p = Poller::nmis(&brokers, "p-full", &dir.path().join("spool"), &log,
        &["--spool-max-bytes", "64KiB", "--spool-segment-bytes", "16KiB"], dir.path(), 0);
    wait_for(Duration::from_secs(30), "spool full", || p.metric("estate_poller_spool_full") == Some(1.0));
    let spooled = p.metric("estate_poller_records_spooled_total").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let later = p.metric("estate_poller_records_spooled_total").unwrap();
    let bytes = p.metric("estate_poller_spool_bytes").unwrap();
    assert!(later - spooled <= 1.0, "input throttled while full ({spooled} then {later}; heartbeats aside)");
    assert!(later < total as f64 / 2.0, "most input not yet read: {later}");
    assert!(bytes <= (64 << 10) as f64 + (8 << 10) as f64, "spool bounded: {bytes}");
    assert!(p.log_text().contains("spool full"), "{}", p.log_tail());
    b.restart();
    let got = read_topic(&brokers, Duration::from_secs(120), &[&p], has_lines("p-full", total));
    assert_exactly_once_in_order(&got, "p-full", 0..total);
    wait_for(Duration::from_secs(10), "spool no longer full", || p.metric("estate_poller_spool_full") == Some(0.0));
}

/// A mirror pair on the same log: each event is stored once after ingest,
/// even when one of the pair dies halfway.
#[test]
fn mirror_pair_stores_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let b = broker(dir.path());
    let brokers = b.brokers();
    let log = dir.path().join("event.log");
    let a = Poller::nmis(&brokers, "mirror-a", &dir.path().join("spool-a"), &log, &[], dir.path(), 0);
    let mut b = Poller::nmis(&brokers, "mirror-b", &dir.path().join("spool-b"), &log, &[], dir.path(), 0);
    let ing = Ingest::start(&brokers, &store, "g-mirror", &[], dir.path(), 0);
    write_lines(&log, 0..300);
    read_topic(&brokers, Duration::from_secs(60), &[&a, &b], |g| has_lines("mirror-a", 300)(g) && has_lines("mirror-b", 300)(g));
    b.kill();
    write_lines(&log, 300..600);
    read_topic(&brokers, Duration::from_secs(60), &[&a], has_lines("mirror-a", 600));
    wait_for_logged(Duration::from_secs(120), "600 events stored", &[&ing], || events_count(&store) >= 600);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(events_count(&store), 600, "each event stored once");
    assert_eq!(sql_i64(&store, "SELECT count(DISTINCT event_id) FROM events"), 600);
    let dups = sql_i64(&store, "SELECT sum(duplicates) FROM receipts WHERE tenant = 'acme'");
    assert_eq!(dups, 300, "the mirror's copies of the first 300 were dropped as duplicates");
    let by_poller: BTreeMap<String, i64> = ["mirror-a", "mirror-b"]
        .iter()
        .map(|p| (p.to_string(), sql_i64(&store, &format!("SELECT count(*) FROM events WHERE poller = '{p}'"))))
        .collect();
    assert_eq!(by_poller.values().sum::<i64>(), 600, "{by_poller:?}");
}

/// Batch mode ships at the sync interval and not before.
#[test]
fn batch_mode_delivers_at_the_sync_interval_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let brokers = b.brokers();
    let log = dir.path().join("event.log");
    write_lines(&log, 0..200);
    let t0 = Instant::now();
    let p = Poller::nmis(&brokers, "p-batch", &dir.path().join("spool"), &log,
        &["--mode", "batch", "--sync-interval", "8s", "--compression", "zstd"], dir.path(), 0);
    // Nothing before the first sync (t0 + 8 s); check until t0 + 6.5 s.
    let early = read_topic(&brokers, Duration::from_secs(30), &[&p], |g| !lines_of(g, "p-batch").is_empty() || t0.elapsed() > Duration::from_millis(6500));
    assert!(lines_of(&early, "p-batch").is_empty(), "nothing shipped before the sync interval (at {:?})", t0.elapsed());
    assert!(p.metric("estate_poller_spool_depth").unwrap_or(0.0) >= 200.0, "events wait in the spool");
    let got = read_topic(&brokers, Duration::from_secs(30), &[&p], has_lines("p-batch", 200));
    let at = t0.elapsed();
    assert!(at >= Duration::from_secs(7) && at < Duration::from_secs(14), "shipped at the interval: {at:?}");
    assert_exactly_once_in_order(&got, "p-batch", 0..200);
    // The next lines wait for the next sync (t0 + 16 s).
    write_lines(&log, 200..300);
    let early = read_topic(&brokers, Duration::from_secs(30), &[&p], |g| lines_of(g, "p-batch").len() > 200 || t0.elapsed() > Duration::from_millis(14_500));
    assert_eq!(lines_of(&early, "p-batch").len(), 200, "second batch not before its sync (at {:?})", t0.elapsed());
    let got = read_topic(&brokers, Duration::from_secs(30), &[&p], has_lines("p-batch", 300));
    assert_exactly_once_in_order(&got, "p-batch", 0..300);
}

/// `--json-lines -`: wire objects without stamping fields on stdin; the
/// agent stamps them, drains its spool at end of input and exits 0.
#[test]
fn json_lines_on_stdin_are_stamped_and_drained() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    let brokers = b.brokers();
    let mut p = Poller::start(&brokers, "p-json", &dir.path().join("spool"), &["--json-lines", "-"], &[], dir.path(), 0);
    {
        let mut stdin = p.child.stdin.take().unwrap();
        for i in 0..100 {
            writeln!(stdin, r#"{{"time":{},"node":"r{}","event":"Node Down","level":"critical","details":"line {i}","seq":999}}"#, (BASE_S + i) * 1000, i % 7).unwrap();
        }
        writeln!(stdin, "not json").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not exit at end of input\n{}", p.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}\n{}", p.log_tail());
    let got = read_topic(&brokers, Duration::from_secs(30), &[&p], has_lines("p-json", 100));
    assert_exactly_once_in_order(&got, "p-json", 0..100);
    let ev = got.iter().find(|l| l.poller() == "p-json" && l.v["type"] == "event").unwrap();
    let id = estate_schemas::derive_event_id(TENANT, ev.v["node"].as_str().unwrap(), "Node Down", "", None, ev.v["time"].as_i64().unwrap());
    assert_eq!(ev.v["event_id"], id.as_str(), "event_id by the derivation rule");
    assert!(p.log_text().contains("line=101"), "the malformed line is logged with its number\n{}", p.log_tail());
}

/// `--per-tenant-topic` sends to `estate.events.<tenant>`; `--kafka-opt`
/// reaches librdkafka (a bad setting is a configuration error, exit 1).
#[test]
fn per_tenant_topic_and_kafka_opts() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.create_topics(&[("estate.events.acme", 1)]);
    let brokers = b.brokers();
    let mut p = Poller::start(&brokers, "p-topic", &dir.path().join("spool"), &["--json-lines", "-"],
        &["--per-tenant-topic", "--kafka-opt", "client.id=estate-it"], dir.path(), 0);
    {
        let mut stdin = p.child.stdin.take().unwrap();
        for i in 0..20 {
            writeln!(stdin, r#"{{"time":{},"node":"r1","event":"Node Reset","level":"Warning","details":"line {i}"}}"#, (BASE_S + i) * 1000).unwrap();
        }
    }
    assert!(p.child.wait().unwrap().success(), "{}", p.log_tail());
    let got = read_topic_named(&brokers, "estate.events.acme", 1, Duration::from_secs(30), &[&p], has_lines("p-topic", 20));
    assert_exactly_once_in_order(&got, "p-topic", 0..20);
    let shared = read_topic(&brokers, Duration::from_secs(2), &[], |_| false_after(Duration::from_secs(1)));
    assert!(lines_of(&shared, "p-topic").is_empty(), "nothing on the shared topic");
    let mut bad = Poller::start(&brokers, "p-bad", &dir.path().join("spool-bad"), &["--json-lines", "-"],
        &["--kafka-opt", "no.such.setting=1"], dir.path(), 0);
    drop(bad.child.stdin.take());
    let status = bad.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", bad.log_tail());
    assert!(bad.log_text().contains("no.such.setting"), "{}", bad.log_tail());
}

/// A `read_topic` predicate that turns true after `d` (to read for a while).
fn false_after(d: Duration) -> bool {
    thread_local!(static START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) });
    START.with(|s| {
        let start = s.get().unwrap_or_else(|| {
            let now = Instant::now();
            s.set(Some(now));
            now
        });
        start.elapsed() >= d
    })
}
