use std::sync::Arc;

use super::*;

fn cfg(dir: &Path, max: u64, seg: u64) -> SpoolConfig {
    cfg_with(dir, max, seg, FsyncPolicy::Always)
}

/// A test spool of tenant `acme`, poller `p1` (shared with the fuzz targets).
pub(super) fn cfg_with(dir: &Path, max: u64, seg: u64, fsync: FsyncPolicy) -> SpoolConfig {
    SpoolConfig { dir: dir.to_owned(), max_bytes: max, segment_bytes: seg, fsync, tenant: "acme".into(), poller: "p1".into() }
}

fn append_n(s: &Spool, from_line: u64, n: u64) -> usize {
    let items: Vec<u64> = (from_line..from_line + n).collect();
    s.append(
        &items,
        |l| Some(InputPos { ino: 7, offset: l * 10, line: *l }),
        |l, seq, epoch, b| b.extend_from_slice(format!("line {l} seq {seq} epoch {epoch}").as_bytes()),
        false,
    )
    .unwrap()
}

fn read_all(s: &Spool) -> Vec<Record> {
    let mut r = s.reader();
    let mut out = Vec::new();
    while r.read(1000, None, &mut out).unwrap() > 0 {}
    out
}

#[test]
fn append_read_ack_and_reopen_keep_seq_continuous() {
    let dir = tempfile::tempdir().unwrap();
    let (s, rec) = Spool::open(cfg(dir.path(), 1 << 30, 4096)).unwrap();
    assert!(rec.new_epoch);
    let epoch = s.epoch();
    assert_eq!(append_n(&s, 1, 300), 300);
    let recs = read_all(&s);
    assert_eq!(recs.len(), 300);
    assert!(recs.iter().enumerate().all(|(i, r)| r.seq == i as i64 + 1 && r.epoch == epoch));
    assert_eq!(String::from_utf8_lossy(&recs[4].payload), format!("line 5 seq 5 epoch {epoch}"));
    // Ack the first 100, checkpoint: fully acked sealed segments go away.
    let segs_before = std::fs::read_dir(dir.path()).unwrap().count();
    s.ack(recs[99].end, 100, (epoch, 100), None);
    assert!(s.checkpoint().unwrap() > 0);
    assert!(std::fs::read_dir(dir.path()).unwrap().count() < segs_before);
    assert_eq!(s.depth(), 200);
    drop(s);
    let (s, rec) = Spool::open(cfg(dir.path(), 1 << 30, 4096)).unwrap();
    assert!(!rec.new_epoch);
    assert_eq!((s.epoch(), s.last_seq(), rec.depth), (epoch, 300, 200));
    assert_eq!(rec.input, InputPos { ino: 7, offset: 3000, line: 300 });
    let recs = read_all(&s);
    assert_eq!(recs.first().unwrap().seq, 101);
    assert_eq!(recs.last().unwrap().seq, 300);
    append_n(&s, 301, 1);
    assert_eq!(read_all(&s).last().unwrap().seq, 301);
}

#[test]
fn torn_tail_is_cut_and_seq_resumes_after_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(cfg(dir.path(), 1 << 30, 1 << 20)).unwrap();
    append_n(&s, 1, 10);
    drop(s);
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
    let (s, rec) = Spool::open(cfg(dir.path(), 1 << 30, 1 << 20)).unwrap();
    assert!(rec.torn_bytes > 0);
    // The torn record (seq 10) was never visible; its seq is reused for the
    // same line, which is re-read from the input position of seq 9.
    assert_eq!(s.last_seq(), 9);
    assert_eq!(rec.input.line, 9);
    assert_eq!(read_all(&s).len(), 9);
}

#[test]
fn lost_state_starts_a_new_epoch_and_keeps_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(cfg(dir.path(), 1 << 30, 1 << 20)).unwrap();
    let e1 = s.epoch();
    append_n(&s, 1, 5);
    drop(s);
    std::fs::remove_file(dir.path().join("state.json")).unwrap();
    let (s, rec) = Spool::open(cfg(dir.path(), 1 << 30, 1 << 20)).unwrap();
    assert!(rec.new_epoch);
    assert!(s.epoch() > e1);
    assert_eq!(s.last_seq(), 0);
    append_n(&s, 6, 1);
    let recs = read_all(&s);
    assert_eq!(recs.len(), 6);
    assert_eq!((recs[5].epoch, recs[5].seq), (s.epoch(), 1));
}

#[test]
fn other_poller_and_second_agent_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(cfg(dir.path(), 1 << 30, 1 << 20)).unwrap();
    assert!(matches!(Spool::open(cfg(dir.path(), 1 << 30, 1 << 20)), Err(Error::SpoolLocked(_))));
    drop(s);
    let mut c = cfg(dir.path(), 1 << 30, 1 << 20);
    c.poller = "other".into();
    assert!(matches!(Spool::open(c), Err(Error::Config(_))));
}

#[test]
fn full_spool_blocks_appends_until_acks_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(cfg(dir.path(), 16 << 10, 4 << 10)).unwrap();
    let s = Arc::new(s);
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || append_n(&s, 1, 2000))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.is_full(), "the writer waits at the limit");
    let bytes = s.bytes();
    assert!(bytes < (16 << 10) + (8 << 10), "soft limit overshoot bounded by one chunk: {bytes}");
    // Drain as a sender would: read, ack, checkpoint.
    let mut r = s.reader();
    let mut seen = Vec::new();
    while seen.len() < 2000 {
        let mut out = Vec::new();
        r.read(100, None, &mut out).unwrap();
        if let Some(last) = out.last() {
            s.ack(last.end, out.len() as u64, (last.epoch, last.seq), None);
            s.checkpoint().unwrap();
        } else {
            s.wait(Duration::from_millis(50));
        }
        seen.extend(out.into_iter().map(|r| r.seq));
    }
    assert_eq!(writer.join().unwrap(), 2000);
    assert_eq!(seen, (1..=2000).collect::<Vec<i64>>());
    assert!(!s.is_full());
}

#[test]
fn segment_numbers_keep_growing_when_every_segment_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Spool::open(cfg(dir.path(), 1 << 30, 4096)).unwrap();
    append_n(&s, 1, 100);
    let recs = read_all(&s);
    s.ack(recs.last().unwrap().end, 100, (s.epoch(), 100), None);
    s.checkpoint().unwrap();
    drop(s);
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "seg") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let (s, rec) = Spool::open(cfg(dir.path(), 1 << 30, 4096)).unwrap();
    assert!(!rec.new_epoch);
    append_n(&s, 101, 3);
    let recs = read_all(&s);
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![101, 102, 103]);
}
