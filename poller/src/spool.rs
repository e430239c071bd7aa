//! The durable disk spool: append-only segments of CRC-checked records.
//!
//! Layout of a spool directory: `state.json` (see [`crate::state`]), a `LOCK`
//! file held with an exclusive lock while an agent runs, and segments
//! `<number>.seg`. A segment starts with the 8-byte magic `ESTSPL01`; each
//! record is a 56-byte little-endian header (`len u32`, `crc32 u32` over the
//! rest of the header and the payload, `seq i64`, `epoch i64`, `append_ms
//! i64`, input `ino u64`, `offset u64`, `line u64`) and the payload: the
//! stamped wire message exactly as it is sent.
//!
//! Guarantees:
//! - A record is visible to the sender only once it is durable under the
//!   fsync policy, so its seq and input position are on disk before it can
//!   leave the spool; a restart never reuses or skips a seq.
//! - A segment is deleted only after every record in it was acknowledged and
//!   the state file saying so is durable.
//! - At the size limit, appends wait (backpressure); nothing is dropped.
//! - On open, a torn tail (partial or CRC-failing last records of the last
//!   segment, from a crash mid-write) is cut off; it was never visible.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::state::{self, InputPos, KafkaCoord, SpoolPos, SpoolState};

const MAGIC: &[u8; 8] = b"ESTSPL01";
const MAGIC_LEN: u64 = MAGIC.len() as u64;
/// Bytes of a record header.
pub const HEADER_BYTES: usize = 56;

/// When appended records are fsync'd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every append batch, before the records become sendable.
    Always,
    /// At most this often (group commit); records become sendable when synced.
    Interval(Duration),
    /// Never (tmpfs, benchmarks): a crash may lose the unsynced tail.
    Never,
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool directory.
    pub dir: PathBuf,
    /// Size limit over all segment files; appends wait at the limit.
    pub max_bytes: u64,
    /// A segment is sealed and a new one started past this size.
    pub segment_bytes: u64,
    /// Fsync policy.
    pub fsync: FsyncPolicy,
    /// Tenant stamped on records (checked against the state file).
    pub tenant: String,
    /// Poller id (checked against the state file).
    pub poller: String,
}

/// One record read back from the spool.
#[derive(Debug, Clone)]
pub struct Record {
    /// Sequence number.
    pub seq: i64,
    /// Epoch.
    pub epoch: i64,
    /// When it was appended (UTC ms).
    pub append_ms: i64,
    /// Input position after the line it came from.
    pub input: InputPos,
    /// The stamped wire message.
    pub payload: Vec<u8>,
    /// Spool position just after this record.
    pub end: SpoolPos,
}

#[derive(Debug, Clone)]
struct Segment {
    id: u64,
    /// Bytes written.
    written: u64,
    /// Bytes durable (readable by the sender).
    durable: u64,
    sealed: bool,
}

#[derive(Debug)]
struct Inner {
    segments: VecDeque<Segment>,
    total_bytes: u64,
    epoch: i64,
    next_seq: i64,
    depth: u64,
    acked: SpoolPos,
    acked_seq: Option<(i64, i64)>,
    kafka: Option<KafkaCoord>,
    input: InputPos,
    dirty: bool,
    full: bool,
    /// An append failed for lack of disk space and waits for space.
    disk_full: bool,
    closed: bool,
}

#[derive(Debug)]
struct Writer {
    file: File,
    segment: u64,
    len: u64,
    last_sync: Instant,
    buf: Vec<u8>,
    /// A write failed and was cut back: the next append starts a new
    /// segment, because a reader may have buffered the cut bytes.
    cut: bool,
}

/// What recovery found on open.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The state file was missing or the directory new: a new epoch started.
    pub new_epoch: bool,
    /// Records waiting to be sent.
    pub depth: u64,
    /// Bytes cut from a torn tail.
    pub torn_bytes: u64,
    /// Where the input resumes.
    pub input: InputPos,
}

/// An open spool. Shared between the input thread (appends), the sender
/// (reads, acks) and housekeeping (checkpoints, fsync).
#[derive(Debug)]
pub struct Spool {
    cfg: SpoolConfig,
    inner: Mutex<Inner>,
    changed: Condvar,
    writer: Mutex<Writer>,
    _lock: File,
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

struct Header {
    len: usize,
    crc: u32,
    seq: i64,
    epoch: i64,
    append_ms: i64,
    input: InputPos,
}

fn parse_header(h: &[u8; HEADER_BYTES]) -> Header {
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    Header {
        len: u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize,
        crc: u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
        seq: u64_at(8) as i64,
        epoch: u64_at(16) as i64,
        append_ms: u64_at(24) as i64,
        input: InputPos { ino: u64_at(32), offset: u64_at(40), line: u64_at(48) },
    }
}

/// Appends one record (header + payload) to `buf`; `payload` is written by
/// `encode` directly into `buf`.
fn put_record(buf: &mut Vec<u8>, seq: i64, epoch: i64, append_ms: i64, input: InputPos, encode: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    for v in [seq as u64, epoch as u64, append_ms as u64, input.ino, input.offset, input.line] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    encode(buf);
    let len = (buf.len() - start - HEADER_BYTES) as u32;
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Payload bytes reserved before a record's CRC is checked.
const RESERVE_BYTES: usize = 1 << 20;

/// Reads the record at the reader's position; `Ok(None)` at a clean end.
fn read_record(r: &mut impl Read, scratch: &mut Vec<u8>) -> std::io::Result<Option<(Header, Vec<u8>)>> {
    let mut h = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        let n = r.read(&mut h[got..])?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        got += n;
    }
    let hdr = parse_header(&h);
    // The length field is not trusted before the CRC: reserve at most
    // RESERVE_BYTES and let the buffer grow with the bytes actually read, so
    // a corrupt length (up to 4 GiB) costs no more memory than the data.
    scratch.clear();
    scratch.reserve(hdr.len.min(RESERVE_BYTES));
    if r.by_ref().take(hdr.len as u64).read_to_end(scratch)? < hdr.len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut c = crc32fast::Hasher::new();
    c.update(&h[8..]);
    c.update(scratch);
    if c.finalize() != hdr.crc {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "record CRC mismatch"));
    }
    Ok(Some((hdr, std::mem::take(scratch))))
}

/// Scans a segment: returns the byte length of its valid prefix, the records
/// in it after `from` (if it is that segment), and the last record header.
fn scan_segment(path: &Path, count_from: Option<u64>) -> Result<(u64, u64, Option<Header>, u64)> {
    let f = File::open(path).map_err(Error::io("opening spool segment", path))?;
    let file_len = f.metadata().map_err(Error::io("stat", path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut magic = [0u8; 8];
    if file_len < MAGIC_LEN || r.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Ok((0, 0, None, file_len));
    }
    let mut pos = MAGIC_LEN;
    let mut after = 0u64;
    let mut last = None;
    let mut scratch = Vec::new();
    loop {
        match read_record(&mut r, &mut scratch) {
            Ok(Some((h, payload))) => {
                pos += (HEADER_BYTES + payload.len()) as u64;
                scratch = payload;
                if count_from.is_some_and(|f| pos > f) {
                    after += 1;
                }
                last = Some(h);
            }
            Ok(None) => break,
            Err(_) => break,
        }
    }
    Ok((pos, after, last, file_len - pos))
}

fn new_epoch(min: i64) -> i64 {
    (chrono::Utc::now().timestamp()).max(min).max(1)
}

impl Spool {
    /// Opens (or creates) the spool in `cfg.dir`, recovering its state.
    pub fn open(cfg: SpoolConfig) -> Result<(Spool, Recovered)> {
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir).map_err(Error::io("creating spool directory", &dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(Error::io("opening", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(Error::SpoolLocked(dir)),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("locking", lock_path)(e)),
        }
        let mut ids: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(Error::io("listing", &dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let saved = state::load(&dir)?;
        if let Some(s) = &saved
            && (s.tenant != cfg.tenant || s.poller != cfg.poller)
        {
            return Err(Error::Config(format!(
                "spool {} belongs to tenant {:?} poller {:?}, not {:?}/{:?}; use another --spool-dir",
                dir.display(),
                s.tenant,
                s.poller,
                cfg.tenant,
                cfg.poller
            )));
        }
        let mut acked = saved.as_ref().map(|s| s.acked).unwrap_or_default();
        if ids.first().is_some_and(|&first| acked.segment < first) || saved.is_none() {
            acked = SpoolPos { segment: ids.first().copied().unwrap_or(0), offset: MAGIC_LEN };
        }
        let mut segments = VecDeque::new();
        let mut total = 0u64;
        let mut depth = 0u64;
        let mut torn = 0u64;
        let mut max_epoch = 0i64;
        let mut last_hdr: Option<Header> = None;
        for (i, &id) in ids.iter().enumerate() {
            let path = seg_path(&dir, id);
            let count_from = match id.cmp(&acked.segment) {
                std::cmp::Ordering::Less => None,
                std::cmp::Ordering::Equal => Some(acked.offset),
                std::cmp::Ordering::Greater => Some(0),
            };
            let (valid, after, last, extra) = scan_segment(&path, count_from)?;
            if extra > 0 {
                if i + 1 == ids.len() {
                    tracing::warn!(segment = %path.display(), bytes = extra, "cutting a torn tail off the spool (crash mid-write)");
                    let f = OpenOptions::new().write(true).open(&path).map_err(Error::io("opening", &path))?;
                    f.set_len(valid.max(MAGIC_LEN)).map_err(Error::io("truncating", &path))?;
                    f.sync_all().map_err(Error::io("fsync", &path))?;
                    torn += extra;
                } else {
                    tracing::error!(segment = %path.display(), bytes = extra, "corrupt spool segment: records after the corruption cannot be read");
                }
            }
            depth += after;
            if let Some(h) = last {
                max_epoch = max_epoch.max(h.epoch);
                last_hdr = Some(h);
            }
            let len = valid.max(MAGIC_LEN);
            total += len;
            segments.push_back(Segment { id, written: len, durable: len, sealed: true });
        }
        let new = saved.is_none();
        let (epoch, mut next_seq, mut input) = match &saved {
            Some(s) => (s.epoch, s.next_seq, s.input),
            None => {
                // A new epoch must exceed every epoch on disk; a CRC-valid
                // record with the largest epoch cannot be from an agent.
                let above = max_epoch.checked_add(1).ok_or_else(|| Error::Spool {
                    path: dir.clone(),
                    detail: format!("a record carries epoch {max_epoch}, so no newer epoch exists; move the spool aside"),
                })?;
                (new_epoch(above), 1, InputPos::default())
            }
        };
        if let Some(h) = &last_hdr
            && h.epoch == epoch
            && h.seq >= next_seq
        {
            next_seq = h.seq + 1;
            input = h.input;
        }
        if new && let Some(h) = &last_hdr {
            // The state file is lost but records survive: resume the input
            // after the last spooled line (it is still the same file).
            input = h.input;
        }
        // Segment numbers only grow, even when every segment was deleted:
        // the acked position must never point past new records.
        let next_id = ids.last().copied().unwrap_or(0).max(saved.as_ref().map_or(0, |s| s.acked.segment)) + 1;
        let path = seg_path(&dir, next_id);
        let mut file = File::create(&path).map_err(Error::io("creating spool segment", &path))?;
        file.write_all(MAGIC).map_err(Error::io("writing", &path))?;
        if cfg.fsync != FsyncPolicy::Never {
            file.sync_all().map_err(Error::io("fsync", &path))?;
            state::sync_dir(&dir)?;
        }
        total += MAGIC_LEN;
        segments.push_back(Segment { id: next_id, written: MAGIC_LEN, durable: MAGIC_LEN, sealed: false });
        if ids.is_empty() {
            acked = SpoolPos { segment: next_id, offset: MAGIC_LEN };
        }
        let inner = Inner {
            segments,
            total_bytes: total,
            epoch,
            next_seq,
            depth,
            acked,
            acked_seq: saved.as_ref().and_then(|s| s.acked_seq),
            kafka: saved.as_ref().and_then(|s| s.kafka.clone()),
            input,
            dirty: true,
            full: false,
            disk_full: false,
            closed: false,
        };
        let writer = Writer { file, segment: next_id, len: MAGIC_LEN, last_sync: Instant::now(), buf: Vec::with_capacity(1 << 20), cut: false };
        let spool = Spool { cfg, inner: Mutex::new(inner), changed: Condvar::new(), writer: Mutex::new(writer), _lock: lock };
        spool.checkpoint()?;
        Ok((spool, Recovered { new_epoch: new, depth, torn_bytes: torn, input }))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current epoch.
    pub fn epoch(&self) -> i64 {
        self.inner().epoch
    }

    /// The last seq assigned (0 when none yet in this epoch).
    pub fn last_seq(&self) -> i64 {
        self.inner().next_seq - 1
    }

    /// Records not yet acknowledged by the broker.
    pub fn depth(&self) -> u64 {
        self.inner().depth
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.inner().total_bytes
    }

    /// True while an append waits for space.
    pub fn is_full(&self) -> bool {
        let i = self.inner();
        i.full || i.disk_full
    }

    /// The acknowledged position and the last acknowledged `(epoch, seq)`.
    pub fn acked(&self) -> (SpoolPos, Option<(i64, i64)>, Option<KafkaCoord>) {
        let i = self.inner();
        (i.acked, i.acked_seq, i.kafka.clone())
    }

    /// Wakes every waiter and makes blocked appends give up.
    pub fn close(&self) {
        self.inner().closed = true;
        self.changed.notify_all();
    }

    /// Appends `items` in order, each stamped with the next seq. `encode`
    /// writes the payload of an item given its seq and the epoch; `pos` is the
    /// input position after the item. Unless `force`, waits while the spool is
    /// at its size limit. Returns how many items were appended: fewer than
    /// `items.len()` only when the spool was closed while waiting.
    pub fn append<T>(
        &self,
        items: &[T],
        pos: impl Fn(&T) -> Option<InputPos>,
        mut encode: impl FnMut(&T, i64, i64, &mut Vec<u8>),
        force: bool,
    ) -> Result<usize> {
        let chunk_limit = (self.cfg.segment_bytes / 4).clamp(4096, 1 << 20) as usize;
        let mut done = 0;
        while done < items.len() {
            if !force && !self.wait_for_space() {
                return Ok(done);
            }
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if (w.len >= self.cfg.segment_bytes || w.cut)
                && let Err(e) = self.rotate(&mut w)
            {
                drop(w);
                if force || !e.is_disk_full() {
                    return Err(e);
                }
                if !self.wait_for_disk(&e) {
                    return Ok(done);
                }
                continue;
            }
            let (epoch, seq0, mut input) = {
                let i = self.inner();
                (i.epoch, i.next_seq, i.input)
            };
            let append_ms = now_ms();
            let mut buf = std::mem::take(&mut w.buf);
            buf.clear();
            let mut n = 0;
            for item in &items[done..] {
                if let Some(p) = pos(item) {
                    input = p;
                }
                let seq = seq0 + n as i64;
                put_record(&mut buf, seq, epoch, append_ms, input, |b| encode(item, seq, epoch, b));
                n += 1;
                if buf.len() >= chunk_limit {
                    break;
                }
            }
            let path = seg_path(&self.cfg.dir, w.segment);
            let synced = match self.cfg.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval(d) => w.last_sync.elapsed() >= d,
                FsyncPolicy::Never => false,
            };
            let res = w.file.write_all(&buf).map_err(Error::io("writing spool segment", &path)).and_then(|()| {
                if synced { w.file.sync_data().map_err(Error::io("fsync spool segment", &path)) } else { Ok(()) }
            });
            if let Err(e) = res {
                if !e.is_disk_full() {
                    return Err(e);
                }
                // Undo the partial write: the segment must end on a record
                // boundary, and these records have no seq yet. The segment
                // is then sealed there: the next append goes to a new one,
                // never over bytes a reader may already have buffered.
                let len = w.len;
                w.file.set_len(len).map_err(Error::io("truncating spool segment", &path))?;
                w.file.seek(SeekFrom::Start(len)).map_err(Error::io("seeking spool segment", &path))?;
                w.cut = true;
                w.buf = buf;
                drop(w);
                if force {
                    return Err(e);
                }
                if !self.wait_for_disk(&e) {
                    return Ok(done);
                }
                continue;
            }
            w.len += buf.len() as u64;
            if synced {
                w.last_sync = Instant::now();
            }
            let written = buf.len() as u64;
            w.buf = buf;
            {
                let mut i = self.inner();
                i.next_seq = seq0 + n as i64;
                i.input = input;
                i.depth += n as u64;
                i.total_bytes += written;
                i.dirty = true;
                let never = self.cfg.fsync == FsyncPolicy::Never;
                let seg = i.segments.back_mut().expect("active segment");
                seg.written = w.len;
                if synced || never {
                    seg.durable = w.len;
                }
            }
            drop(w);
            {
                let mut i = self.inner();
                if i.disk_full {
                    i.disk_full = false;
                    tracing::info!(depth = i.depth, "spool disk has space again: input resumed");
                }
            }
            self.changed.notify_all();
            done += n;
        }
        Ok(done)
    }

    /// Records the input position reached without a record (malformed lines
    /// at the end of a read), so a restart does not re-read them.
    pub fn note_input(&self, input: InputPos) {
        let mut i = self.inner();
        i.input = input;
        i.dirty = true;
    }

    /// After an append failed for lack of disk space: flags it (heartbeats
    /// and the `spool_full` gauge say so), logs it once, and waits a little
    /// for space. False when the spool was closed meanwhile.
    fn wait_for_disk(&self, e: &Error) -> bool {
        let mut i = self.inner();
        if !i.disk_full {
            i.disk_full = true;
            tracing::warn!(error = %e, depth = i.depth, "spool disk full: input paused until space is freed (nothing is dropped)");
        }
        let i = self.changed.wait_timeout(i, Duration::from_millis(500)).unwrap_or_else(|p| p.into_inner()).0;
        !i.closed
    }

    fn wait_for_space(&self) -> bool {
        let mut i = self.inner();
        let mut logged = false;
        while i.total_bytes >= self.cfg.max_bytes && !i.closed {
            if !i.full {
                i.full = true;
                tracing::warn!(
                    bytes = i.total_bytes,
                    limit = self.cfg.max_bytes,
                    depth = i.depth,
                    "spool full: input paused until the broker acknowledges (nothing is dropped)"
                );
                logged = true;
            }
            i = self.changed.wait_timeout(i, Duration::from_millis(200)).unwrap_or_else(|p| p.into_inner()).0;
        }
        if i.full && !i.closed {
            i.full = false;
            tracing::info!(bytes = i.total_bytes, depth = i.depth, "spool below its limit: input resumed");
        }
        let _ = logged;
        !i.closed
    }

    fn rotate(&self, w: &mut Writer) -> Result<()> {
        let old = seg_path(&self.cfg.dir, w.segment);
        if self.cfg.fsync != FsyncPolicy::Never {
            w.file.sync_data().map_err(Error::io("fsync spool segment", &old))?;
        }
        let id = w.segment + 1;
        let path = seg_path(&self.cfg.dir, id);
        let mut file = File::create(&path).map_err(Error::io("creating spool segment", &path))?;
        file.write_all(MAGIC).map_err(Error::io("writing", &path))?;
        if self.cfg.fsync != FsyncPolicy::Never {
            file.sync_all().map_err(Error::io("fsync", &path))?;
            state::sync_dir(&self.cfg.dir)?;
        }
        {
            let mut i = self.inner();
            let seg = i.segments.back_mut().expect("active segment");
            seg.durable = w.len;
            seg.sealed = true;
            i.segments.push_back(Segment { id, written: MAGIC_LEN, durable: MAGIC_LEN, sealed: false });
            i.total_bytes += MAGIC_LEN;
        }
        *w = Writer { file, segment: id, len: MAGIC_LEN, last_sync: Instant::now(), buf: std::mem::take(&mut w.buf), cut: false };
        self.changed.notify_all();
        Ok(())
    }

    /// Fsyncs appended records if the interval policy has some pending; they
    /// become sendable. Called periodically by housekeeping.
    pub fn sync(&self) -> Result<()> {
        let FsyncPolicy::Interval(_) = self.cfg.fsync else { return Ok(()) };
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let pending = self.inner().segments.back().is_some_and(|s| s.durable < w.len);
        if pending {
            let path = seg_path(&self.cfg.dir, w.segment);
            w.file.sync_data().map_err(Error::io("fsync spool segment", &path))?;
            w.last_sync = Instant::now();
            self.inner().segments.back_mut().expect("active segment").durable = w.len;
            self.changed.notify_all();
        }
        Ok(())
    }

    /// Marks everything before `end` acknowledged: `n` records, the last one
    /// `(epoch, seq)`, landed at `kafka`.
    pub fn ack(&self, end: SpoolPos, n: u64, last: (i64, i64), kafka: Option<KafkaCoord>) {
        let mut i = self.inner();
        if end > i.acked {
            i.acked = end;
            i.acked_seq = Some(last);
            if kafka.is_some() {
                i.kafka = kafka;
            }
            i.depth = i.depth.saturating_sub(n);
            i.dirty = true;
        }
    }

    /// Persists the state file if anything changed, then deletes fully
    /// acknowledged sealed segments. Returns the number deleted.
    pub fn checkpoint(&self) -> Result<usize> {
        let snapshot = {
            let mut i = self.inner();
            if !i.dirty {
                return Ok(0);
            }
            i.dirty = false;
            SpoolState {
                format: 1,
                tenant: self.cfg.tenant.clone(),
                poller: self.cfg.poller.clone(),
                epoch: i.epoch,
                next_seq: i.next_seq,
                acked: i.acked,
                acked_seq: i.acked_seq,
                kafka: i.kafka.clone(),
                input: i.input,
            }
        };
        let fsync = self.cfg.fsync != FsyncPolicy::Never;
        if let Err(e) = state::store(&self.cfg.dir, &snapshot, fsync) {
            self.inner().dirty = true;
            return Err(e);
        }
        let doomed: Vec<Segment> = {
            let i = self.inner();
            i.segments
                .iter()
                .filter(|s| s.sealed && (s.id < snapshot.acked.segment || (s.id == snapshot.acked.segment && snapshot.acked.offset >= s.durable)))
                .cloned()
                .collect()
        };
        for s in &doomed {
            let path = seg_path(&self.cfg.dir, s.id);
            std::fs::remove_file(&path).map_err(Error::io("removing acknowledged spool segment", &path))?;
        }
        if !doomed.is_empty() {
            if fsync {
                state::sync_dir(&self.cfg.dir)?;
            }
            let mut i = self.inner();
            i.segments.retain(|s| !doomed.iter().any(|d| d.id == s.id));
            i.total_bytes -= doomed.iter().map(|s| s.written).sum::<u64>();
            drop(i);
            self.changed.notify_all();
        }
        Ok(doomed.len())
    }

    /// A reader positioned at the first unacknowledged record.
    pub fn reader(&self) -> SpoolReader<'_> {
        let acked = self.inner().acked;
        SpoolReader { spool: self, pos: acked, file: None, scratch: Vec::new() }
    }

    /// Waits up to `timeout` for something to change (an append, an ack, close).
    pub fn wait(&self, timeout: Duration) {
        let i = self.inner();
        let _ = self.changed.wait_timeout(i, timeout);
    }

    /// The end of the durable data right now (for batch mode's cut-off).
    pub fn durable_end(&self) -> SpoolPos {
        let i = self.inner();
        let s = i.segments.back().expect("active segment");
        SpoolPos { segment: s.id, offset: s.durable }
    }
}

/// Reads records in spool order, up to what is durable.
#[derive(Debug)]
pub struct SpoolReader<'a> {
    spool: &'a Spool,
    pos: SpoolPos,
    file: Option<BufReader<File>>,
    scratch: Vec<u8>,
}

impl SpoolReader<'_> {
    /// The position of the next record to read.
    pub fn position(&self) -> SpoolPos {
        self.pos
    }

    /// Reads up to `max` records (not past `limit` if given) into `out`.
    pub fn read(&mut self, max: usize, limit: Option<SpoolPos>, out: &mut Vec<Record>) -> Result<usize> {
        let mut n = 0;
        while n < max {
            if limit.is_some_and(|l| self.pos >= l) {
                break;
            }
            let (durable, sealed, next) = {
                let i = self.spool.inner();
                let cur = i.segments.iter().find(|s| s.id == self.pos.segment).cloned();
                let next = i.segments.iter().find(|s| s.id > self.pos.segment).map(|s| s.id);
                match cur {
                    Some(c) => (c.durable, c.sealed, next),
                    // Our segment is gone (deleted after acks we did not see, or
                    // the acked position pointed before the first segment).
                    None => (0, true, next),
                }
            };
            if self.pos.offset >= durable {
                if sealed && let Some(next) = next {
                    self.pos = SpoolPos { segment: next, offset: MAGIC_LEN };
                    self.file = None;
                    continue;
                }
                break;
            }
            if self.file.is_none() {
                let path = seg_path(&self.spool.cfg.dir, self.pos.segment);
                let mut f = File::open(&path).map_err(Error::io("opening spool segment", &path))?;
                f.seek(SeekFrom::Start(self.pos.offset)).map_err(Error::io("seeking", &path))?;
                self.file = Some(BufReader::with_capacity(256 << 10, f));
            }
            let r = self.file.as_mut().expect("opened above");
            match read_record(r, &mut self.scratch) {
                Ok(Some((h, payload))) => {
                    self.pos.offset += (HEADER_BYTES + payload.len()) as u64;
                    out.push(Record { seq: h.seq, epoch: h.epoch, append_ms: h.append_ms, input: h.input, payload, end: self.pos });
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    let path = seg_path(&self.spool.cfg.dir, self.pos.segment);
                    if sealed {
                        tracing::error!(segment = %path.display(), offset = self.pos.offset, error = %e,
                            "corrupt spool record: skipping the rest of this segment");
                        let mut i = self.spool.inner();
                        let seg = i.segments.iter_mut().find(|s| s.id == self.pos.segment).expect("segment exists");
                        seg.durable = self.pos.offset;
                        continue;
                    }
                    return Err(Error::Spool { path, detail: format!("reading record at {}: {e}", self.pos.offset) });
                }
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "spool_fuzz.rs"]
mod fuzz;
