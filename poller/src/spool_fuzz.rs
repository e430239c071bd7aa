//! Fuzz targets for the spool record reader (harness: `estate_schemas::fuzz`).
//!
//! Segments of valid records are written, then corrupted at or after a
//! record boundary (truncation, bit flips, garbage, inserted bytes, huge
//! length fields). Properties: reading never panics, never hangs, never
//! allocates much more than the bytes present, and every record before the
//! corruption is read back exactly; records after it are either read back
//! exactly or not at all.

use std::io::Cursor;

use super::*;
use estate_schemas::fuzz::{Rng, run, show};

/// A record as written, for comparison with what is read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    seq: i64,
    epoch: i64,
    append_ms: i64,
    input: InputPos,
    payload: Vec<u8>,
}

fn any_i64(rng: &mut Rng) -> i64 {
    match rng.below(6) {
        0 => i64::MAX,
        1 => i64::MIN,
        2 => 0,
        3 => -1,
        _ => (rng.next_u64() % 1_000_000) as i64,
    }
}

fn random_record(rng: &mut Rng) -> Rec {
    let n = match rng.below(10) {
        0 => 0,
        1 => rng.below(70_000),
        _ => rng.below(200),
    };
    Rec {
        seq: any_i64(rng),
        epoch: any_i64(rng),
        append_ms: any_i64(rng),
        input: InputPos { ino: rng.next_u64(), offset: rng.next_u64() % 1_000_000, line: rng.next_u64() % 1_000 },
        payload: (0..n).map(|_| rng.next_u64() as u8).collect(),
    }
}

/// Records and their encoding; `bounds[i]` is where record `i` starts.
fn encode(recs: &[Rec]) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut bounds = Vec::new();
    for r in recs {
        bounds.push(buf.len());
        put_record(&mut buf, r.seq, r.epoch, r.append_ms, r.input, |b| b.extend_from_slice(&r.payload));
    }
    bounds.push(buf.len());
    (buf, bounds)
}

/// Corrupts `buf` at or after byte `from`.
fn corrupt(rng: &mut Rng, buf: &mut Vec<u8>, from: usize) {
    let tail = buf.len() - from;
    let at = |rng: &mut Rng| from + rng.below(tail + 1);
    match rng.below(7) {
        0 => buf.truncate(at(rng)),
        1 if tail > 0 => {
            for _ in 0..1 + rng.below(4) {
                let i = from + rng.below(tail);
                buf[i] ^= 1 << rng.below(8);
            }
        }
        2 if tail >= 4 => {
            // A length field (if `from` is a boundary) or any 4 bytes.
            let i = if rng.one_in(2) { from } else { from + rng.below(tail - 3) };
            let v = *rng.pick(&[u32::MAX, 0x8000_0000, 0x7fff_ffff, 1 << 20, 0, 1]);
            buf[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        3 => {
            let i = at(rng);
            let junk: Vec<u8> = (0..1 + rng.below(100)).map(|_| rng.next_u64() as u8).collect();
            buf.splice(i..i, junk);
        }
        4 => {
            // A header of zeros or ones: a zeroed or garbage tail.
            let i = at(rng);
            let b = if rng.one_in(2) { 0 } else { 0xff };
            buf.splice(i..i, std::iter::repeat_n(b, 1 + rng.below(2 * HEADER_BYTES)));
        }
        5 if tail > 0 => {
            let i = from + rng.below(tail);
            buf[i] = rng.next_u64() as u8;
        }
        _ => buf.extend((0..rng.below(64)).map(|_| rng.next_u64() as u8)),
    }
}

/// Allocation allowed for reading `n` bytes: what they hold, doubled, or
/// the reader's up-front reservation.
fn alloc_bound(n: usize) -> usize {
    (2 * n).max(RESERVE_BYTES) + 64
}

/// A reader that fails the test when asked to fill a buffer much larger
/// than the data it holds: that buffer is memory the reader allocated.
struct Probe {
    inner: Cursor<Vec<u8>>,
    bound: usize,
}

impl Read for Probe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(buf.len() <= self.bound, "read into a {} byte buffer for {} bytes of data", buf.len(), self.inner.get_ref().len());
        self.inner.read(buf)
    }
}

/// Reads records until the end or an error; at most one per header's worth
/// of bytes (anything more is a loop).
fn read_back(bytes: Vec<u8>) -> Vec<Rec> {
    let bound = alloc_bound(bytes.len());
    let max = bytes.len() / HEADER_BYTES + 1;
    let mut r = Probe { inner: Cursor::new(bytes), bound };
    let mut scratch = Vec::new();
    let mut out = Vec::new();
    while let Ok(Some((h, payload))) = read_record(&mut r, &mut scratch) {
        assert!(scratch.capacity() <= bound && payload.capacity() <= bound, "allocated more than {bound} bytes");
        assert_eq!(h.len, payload.len());
        out.push(Rec { seq: h.seq, epoch: h.epoch, append_ms: h.append_ms, input: h.input, payload: payload.clone() });
        scratch = payload;
        assert!(out.len() <= max, "more records than the bytes can hold");
    }
    assert!(scratch.capacity() <= bound, "allocated {} bytes for {bound}", scratch.capacity());
    out
}

/// `got` is `must` followed by a prefix of `may`.
fn assert_prefix(got: &[Rec], must: &[Rec], may: &[Rec], input: &[u8]) {
    let ok = got.len() >= must.len()
        && got[..must.len()] == *must
        && got.len() - must.len() <= may.len()
        && got[must.len()..] == may[..got.len() - must.len()];
    assert!(ok, "read back {} records, expected {} intact then a prefix of {}; input {}", got.len(), must.len(), may.len(), show(input));
}

/// One segment body: valid records, corrupted after the first `k`.
fn records_target(rng: &mut Rng) {
    let recs: Vec<Rec> = (0..rng.below(6)).map(|_| random_record(rng)).collect();
    let (mut buf, bounds) = encode(&recs);
    let k = rng.below(recs.len() + 1);
    corrupt(rng, &mut buf, bounds[k]);
    let input = buf.clone();
    let got = read_back(buf);
    assert_prefix(&got, &recs[..k], &recs[k..], &input);
}

#[test]
fn fuzz_spool_records() {
    // The generator is the target here: it knows which records must survive.
    run("spool_records", 10_000, |rng| rng.next_u64().to_le_bytes().to_vec(), |seed| records_target(&mut Rng::new(u64::from_le_bytes(seed.try_into().expect("8 bytes")))));
}

/// Whole spools on disk: one to three segments, one of them corrupted after
/// its first `k` records (or anywhere, magic included), opened, read back,
/// appended to and reopened.
fn open_target(rng: &mut Rng) {
    let dir = tempfile::tempdir().expect("tempdir");
    let nseg = 1 + rng.below(3);
    let segs: Vec<Vec<Rec>> = (0..nseg).map(|_| (0..rng.below(5)).map(|_| random_record(rng)).collect()).collect();
    let bad = rng.below(nseg);
    let k = rng.below(segs[bad].len() + 1);
    let anywhere = rng.one_in(10);
    let mut files = Vec::new();
    for (i, recs) in segs.iter().enumerate() {
        let (body, bounds) = encode(recs);
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&body);
        if i == bad {
            let from = if anywhere { 0 } else { MAGIC.len() + bounds[k] };
            corrupt(rng, &mut bytes, from);
        }
        std::fs::write(seg_path(dir.path(), 3 + i as u64), &bytes).expect("writing a segment");
        files.push(bytes);
    }
    let input = files.concat();
    let cfg = super::tests::cfg_with(dir.path(), 1 << 30, 1 << 20, FsyncPolicy::Never);
    let read_all = |s: &Spool| {
        let mut r = s.reader();
        let mut out = Vec::new();
        let mut rounds = 0;
        while r.read(1000, None, &mut out).expect("reading the spool") > 0 {
            rounds += 1;
            assert!(rounds < 100, "the reader does not reach the end");
        }
        out.into_iter().map(|r| Rec { seq: r.seq, epoch: r.epoch, append_ms: r.append_ms, input: r.input, payload: r.payload }).collect::<Vec<_>>()
    };
    let s = match Spool::open(cfg.clone()) {
        Ok((s, _)) => s,
        Err(e) if segs.iter().flatten().any(|r| r.epoch == i64::MAX) && e.to_string().contains("no newer epoch") => return,
        Err(e) => panic!("opening a corrupted spool: {e}; input {}", show(&input)),
    };
    let got = read_all(&s);
    if anywhere {
        return;
    }
    let must: Vec<Rec> = segs[..bad].iter().flatten().chain(&segs[bad][..k]).cloned().collect();
    let after: Vec<Rec> = segs[bad + 1..].iter().flatten().cloned().collect();
    assert!(got.len() >= must.len() + after.len(), "lost records: read {}, expected at least {}; input {}", got.len(), must.len() + after.len(), show(&input));
    let (head, tail) = got.split_at(got.len() - after.len());
    assert_eq!(tail, after.as_slice(), "records of the segments after the corrupt one");
    assert_prefix(head, &must, &segs[bad][k..], &input);
    // The spool stays usable: an append after recovery is read back, and a
    // reopen reads the same records.
    let n = s.append(&[()], |_| None, |_, _, _, b| b.extend_from_slice(b"after"), true).expect("appending");
    assert_eq!(n, 1);
    let again = read_all(&s);
    assert_eq!(again.len(), got.len() + 1);
    assert_eq!(again.last().map(|r| r.payload.as_slice()), Some(&b"after"[..]));
    drop(s);
    let (s, _) = Spool::open(cfg).expect("reopening");
    assert_eq!(read_all(&s), again);
}

#[test]
fn fuzz_spool_open() {
    run("spool_open", 150, |rng| rng.next_u64().to_le_bytes().to_vec(), |seed| open_target(&mut Rng::new(u64::from_le_bytes(seed.try_into().expect("8 bytes")))));
}

/// Found by `fuzz_spool_records` (seed `b"\xa7Ig$\xd3\xf4\xb3\x1c"`): 63
/// bytes of garbage whose length field reads 419,651,634; the reader zeroed
/// a 400 MB buffer before finding the data short. A corrupt length of 4 GiB
/// allocated 4 GiB.
#[test]
fn regression_garbage_length_field_allocates_only_what_is_there() {
    let input = b"2`\x03\x19\x81\x0e\x9e\x07\x93{\n\xb6\"(\x92\x9eF5\xf6cO\xd4\xac0\x84j\x95\xaa\xf1\x0e\xa3\x0bN\xfa\xa5jd {uZZ\x8f\xc8%\xf3\xde\xf4\xbc\x8dQ\x15u\xb4\x8a\x02\x18\xc2\xb9\xa6\x9ec\xb4";
    assert_eq!(input.len(), 63);
    assert!(read_back(input.to_vec()).is_empty());
    // The extreme: a valid record, then a header claiming 4 GiB.
    let rec = Rec { seq: 1, epoch: 1, append_ms: 0, input: InputPos::default(), payload: b"ok".to_vec() };
    let (mut buf, _) = encode(&[rec.clone(), rec.clone()]);
    let second = HEADER_BYTES + 2;
    buf[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(read_back(buf), vec![rec]);
}

/// Found by `fuzz_spool_open` (seed `b"R\xd7\xa9\xd7\xff9\xddm"`), minimized:
/// a spool without a state file whose last record carries epoch `i64::MAX`
/// made `Spool::open` overflow computing the next epoch (a panic in debug,
/// a negative epoch in release). It is now refused with a message.
#[test]
fn regression_largest_epoch_on_disk_is_refused_not_overflowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = MAGIC.to_vec();
    put_record(&mut bytes, 1, i64::MAX, 0, InputPos::default(), |b| b.extend_from_slice(b"x"));
    std::fs::write(seg_path(dir.path(), 1), &bytes).unwrap();
    let cfg = super::tests::cfg_with(dir.path(), 1 << 30, 1 << 20, FsyncPolicy::Never);
    let err = Spool::open(cfg).expect_err("refused");
    assert!(err.to_string().contains("no newer epoch"), "{err}");
}
