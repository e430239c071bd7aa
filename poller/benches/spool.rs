//! The spool path on one core: NMIS `event.log` lines → tail → parse + map
//! state → stamp (seq, epoch, event_id) → CRC'd spool records on disk.
//! Reports events/s and spool bytes per event, for each fsync policy.
//!
//! `cargo bench -p estate-poller --bench spool` (criterion; set
//! `SPOOL_BENCH_EVENTS` to change the lines per iteration, default 200000).
//! Each iteration spools the whole log into a fresh spool; criterion reports
//! the time per iteration and elements (events) per second.

use std::io::Write as _;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use estate_poller::wire::Stamp;
use estate_poller::{FsyncPolicy, InputPos, Item, Spool, SpoolConfig, Tailer, parse_nmis};

const EVENTS: [(&str, &str, &str); 6] = [
    ("Interface Down", "Major", "GigabitEthernet0/1"),
    ("Interface Up", "Normal", "GigabitEthernet0/1"),
    ("Proactive Interface Input Utilisation", "Major", "Serial0/0/0"),
    ("Node Down", "Critical", ""),
    ("Node Up", "Normal", ""),
    ("Proactive CPU", "Minor", ""),
];

fn write_log(path: &std::path::Path, n: usize) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let (event, level, element) = EVENTS[i % EVENTS.len()];
        writeln!(f, "{},core-rtr-{:04},{event},{level},{element},Uplink to dist-sw-{:02} WAN Bandwidth=2 Mbps: Value=82.13 Threshold=80", 1_700_000_000 + i / 10, i % 2000, i % 50).unwrap();
    }
    f.flush().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Returns (elapsed, spool bytes written).
fn run(log: &std::path::Path, n: usize, fsync: FsyncPolicy) -> (Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(SpoolConfig {
        dir: dir.path().to_owned(),
        max_bytes: 64 << 30,
        segment_bytes: 64 << 20,
        fsync,
        tenant: "acme".into(),
        poller: "bench-poller".into(),
    })
    .unwrap();
    let before = spool.bytes();
    let start = Instant::now();
    let mut t = Tailer::new(log.to_owned(), InputPos::default());
    let mut lines = Vec::with_capacity(4096);
    let mut done = 0;
    while done < n {
        lines.clear();
        t.poll(4096, &mut lines).unwrap();
        assert!(!lines.is_empty(), "log ended early at {done}");
        let mut items: Vec<Item<'_>> = Vec::with_capacity(lines.len());
        let mut bad = Vec::new();
        parse_nmis(&lines, "acme", &mut items, &mut bad);
        assert!(bad.is_empty());
        let appended = spool
            .append(&items, |it| Some(it.pos()), |it, seq, epoch, buf| it.encode(&Stamp { tenant: "acme", poller: "bench-poller", epoch, seq }, buf), false)
            .unwrap();
        assert_eq!(appended, items.len());
        done += lines.len();
    }
    let elapsed = start.elapsed();
    assert_eq!(spool.last_seq(), n as i64);
    (elapsed, spool.bytes() - before)
}

fn spool_path(c: &mut Criterion) {
    let n: usize = std::env::var("SPOOL_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("event.log");
    let log_bytes = write_log(&log, n);
    let policies = [
        ("fsync_always_per_batch", FsyncPolicy::Always),
        ("fsync_100ms", FsyncPolicy::Interval(Duration::from_millis(100))),
        ("fsync_never", FsyncPolicy::Never),
    ];
    // Spool bytes per event do not depend on the policy; report them once.
    let (_, bytes) = run(&log, n, FsyncPolicy::Never);
    eprintln!(
        "spool path, one thread, {n} NMIS lines ({:.1} bytes/line in event.log): {:.1} spool bytes/event",
        log_bytes as f64 / n as f64,
        bytes as f64 / n as f64
    );
    let mut g = c.benchmark_group("spool_path");
    g.throughput(Throughput::Elements(n as u64)).sample_size(10).measurement_time(Duration::from_secs(20));
    for (name, policy) in policies {
        // Each iteration spools the whole log into a fresh spool; only the
        // spooling is timed.
        g.bench_function(name, |b| b.iter_custom(|iters| (0..iters).map(|_| run(&log, n, policy).0).sum()));
    }
    g.finish();
}

criterion_group!(benches, spool_path);
criterion_main!(benches);
