//! Tailing a log file across rotations and restarts, without losing or
//! repeating a line.
//!
//! The position is `(inode, offset after the last whole line, line number)`.
//! - **rename + create** (`event.log` → `event.log.1`, new `event.log`): when
//!   the path names another inode, the old file (still open) is read to its
//!   end first, then the new file from 0. After a restart, the file holding
//!   the saved inode is found among the siblings (`event.log.*`).
//! - **copy-truncate**: the bytes just before our offset are remembered (a
//!   fingerprint). If the file shrank below our offset, or those bytes
//!   changed, it was truncated: the lines between our offset and the
//!   truncation are read from the copy (the sibling whose bytes match the
//!   fingerprint), then the file is read from 0.
//! - A final line without a newline is left until its newline arrives
//!   (except at the end of a rotated-away file, where it is complete).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::state::InputPos;

const FINGERPRINT: u64 = 64;
const READ_CHUNK: usize = 1 << 20;

/// One whole line read from the input.
#[derive(Debug, Clone)]
pub struct Line {
    /// The bytes, without the newline.
    pub bytes: Vec<u8>,
    /// Input position after this line.
    pub pos: InputPos,
}

/// A log-file tailer.
#[derive(Debug)]
pub struct Tailer {
    path: PathBuf,
    file: Option<File>,
    pos: InputPos,
    fingerprint: Vec<u8>,
    /// Lines recovered from a copy or a rotated file, not yet handed out.
    pending: std::collections::VecDeque<Line>,
    buf: Vec<u8>,
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl Tailer {
    /// A tailer of `path` resuming at `pos` (`pos.ino == 0`: from the start
    /// of whatever file is there).
    pub fn new(path: PathBuf, pos: InputPos) -> Tailer {
        Tailer { path, file: None, pos, fingerprint: Vec::new(), pending: Default::default(), buf: Vec::new() }
    }

    /// The current position.
    pub fn position(&self) -> InputPos {
        self.pos
    }

    /// Reads up to `max` whole lines into `out` (possibly none).
    pub fn poll(&mut self, max: usize, out: &mut Vec<Line>) -> Result<()> {
        while out.len() < max
            && let Some(l) = self.pending.pop_front()
        {
            out.push(l);
        }
        if out.len() >= max {
            return Ok(());
        }
        if self.file.is_none() && !self.open()? {
            return Ok(());
        }
        self.check_truncation()?;
        let before = out.len();
        self.read_lines(max, out, false)?;
        if out.len() == before {
            self.check_rotation(max, out)?;
        }
        Ok(())
    }

    /// Opens the file at the path, resuming the saved position. Returns false
    /// when there is no file yet.
    fn open(&mut self) -> Result<bool> {
        let Ok(f) = File::open(&self.path) else { return Ok(false) };
        let ino = f.metadata().map_err(Error::io("stat", &self.path))?.ino();
        if self.pos.ino != 0 && self.pos.ino != ino {
            // Rotated while we were not running: finish the old file first.
            match self.find_sibling(|p, _| inode(p) == Some(self.pos.ino))? {
                Some(old) => {
                    tracing::info!(file = %old.display(), offset = self.pos.offset, "resuming the rotated file first");
                    let of = File::open(&old).map_err(Error::io("opening", &old))?;
                    self.drain_other(&of, self.pos.offset, self.pos)?;
                }
                None => tracing::warn!(
                    path = %self.path.display(), inode = self.pos.ino,
                    "the file we were reading was rotated away and is gone; lines after our position in it cannot be read"
                ),
            }
            self.pos = InputPos { ino, offset: 0, line: 0 };
        } else if self.pos.ino == 0 {
            self.pos = InputPos { ino, offset: 0, line: 0 };
        }
        let len = f.metadata().map_err(Error::io("stat", &self.path))?.len();
        if len < self.pos.offset {
            tracing::warn!(path = %self.path.display(), "file shorter than our saved position (truncated while we were down): reading from the start");
            self.pos = InputPos { ino, offset: 0, line: 0 };
        }
        self.fingerprint = self.read_fingerprint(&f, self.pos.offset);
        self.file = Some(f);
        Ok(true)
    }

    fn read_fingerprint(&self, f: &File, offset: u64) -> Vec<u8> {
        let start = offset.saturating_sub(FINGERPRINT);
        let mut fp = vec![0u8; (offset - start) as usize];
        match f.read_exact_at(&mut fp, start) {
            Ok(()) => fp,
            Err(_) => Vec::new(),
        }
    }

    fn check_truncation(&mut self) -> Result<()> {
        let f = self.file.as_ref().expect("open");
        let len = f.metadata().map_err(Error::io("stat", &self.path))?.len();
        let shrank = len < self.pos.offset;
        let changed = !shrank && !self.fingerprint.is_empty() && self.read_fingerprint(f, self.pos.offset) != self.fingerprint;
        if !(shrank || changed) {
            return Ok(());
        }
        tracing::info!(path = %self.path.display(), offset = self.pos.offset, "file truncated (copy-truncate rotation)");
        let fp = self.fingerprint.clone();
        let offset = self.pos.offset;
        let copy = if fp.is_empty() {
            None
        } else {
            self.find_sibling(|_, f| {
                let l = f.metadata().map(|m| m.len()).unwrap_or(0);
                let mut b = vec![0u8; fp.len()];
                l >= offset && f.read_exact_at(&mut b, offset - fp.len() as u64).is_ok() && b == fp
            })?
        };
        match copy {
            Some(c) => {
                let cf = File::open(&c).map_err(Error::io("opening", &c))?;
                // Positions name the copy: a restart mid-way resumes in it.
                let ino = cf.metadata().map_err(Error::io("stat", &c))?.ino();
                let n = self.drain_other(&cf, offset, InputPos { ino, ..self.pos })?;
                tracing::info!(copy = %c.display(), lines = n, "read the lines written before the truncation from the copy");
            }
            None => tracing::warn!(
                path = %self.path.display(),
                "file truncated but no copy holding our position was found; lines written between our last read and the truncation are lost"
            ),
        }
        self.pos = InputPos { ino: self.pos.ino, offset: 0, line: 0 };
        self.fingerprint.clear();
        Ok(())
    }

    fn check_rotation(&mut self, max: usize, out: &mut Vec<Line>) -> Result<()> {
        let Some(now) = inode(&self.path) else { return Ok(()) };
        if now == self.pos.ino {
            return Ok(());
        }
        // Renamed away: read the old file to its end (a last line without a
        // newline is complete now), then switch to the new file.
        self.read_lines(usize::MAX, out, true)?;
        tracing::info!(path = %self.path.display(), old_inode = self.pos.ino, new_inode = now, lines = self.pos.line, "log rotated (rename + create)");
        self.file = None;
        self.pos = InputPos { ino: now, offset: 0, line: 0 };
        self.fingerprint.clear();
        if self.open()? {
            self.read_lines(max, out, false)?;
        }
        Ok(())
    }

    /// Reads lines of another file (a rotated or copied one) from `offset`
    /// to its end into `pending`. Returns the count.
    fn drain_other(&mut self, f: &File, offset: u64, pos: InputPos) -> Result<usize> {
        let mut data = Vec::new();
        let mut r = f;
        r.seek(SeekFrom::Start(offset)).map_err(Error::io("seeking", &self.path))?;
        r.read_to_end(&mut data).map_err(Error::io("reading rotated file", &self.path))?;
        let mut p = pos;
        let mut n = 0;
        for chunk in data.split_inclusive(|&b| b == b'\n') {
            p.offset += chunk.len() as u64;
            p.line += 1;
            let bytes = chunk.strip_suffix(b"\n").unwrap_or(chunk).to_vec();
            self.pending.push_back(Line { bytes, pos: p });
            n += 1;
        }
        Ok(n)
    }

    fn read_lines(&mut self, max: usize, out: &mut Vec<Line>, at_end: bool) -> Result<()> {
        while out.len() < max
            && let Some(l) = self.pending.pop_front()
        {
            out.push(l);
        }
        let f = self.file.as_ref().expect("open");
        loop {
            if out.len() >= max {
                return Ok(());
            }
            self.buf.resize(READ_CHUNK, 0);
            let n = f.read_at(&mut self.buf, self.pos.offset).map_err(Error::io("reading", &self.path))?;
            if n == 0 {
                return Ok(());
            }
            let data = &self.buf[..n];
            let mut consumed = 0usize;
            for chunk in data.split_inclusive(|&b| b == b'\n') {
                if out.len() >= max {
                    break;
                }
                let whole = chunk.ends_with(b"\n");
                let last_of_rotated = at_end && consumed + chunk.len() == n && n < READ_CHUNK;
                if !(whole || last_of_rotated) {
                    break;
                }
                consumed += chunk.len();
                self.pos.offset += chunk.len() as u64;
                self.pos.line += 1;
                out.push(Line { bytes: chunk.strip_suffix(b"\n").unwrap_or(chunk).to_vec(), pos: self.pos });
            }
            if consumed == 0 {
                if n == READ_CHUNK {
                    // One line longer than a read chunk: take it whole.
                    return Err(Error::Config(format!("{}: line {} is longer than {READ_CHUNK} bytes", self.path.display(), self.pos.line + 1)));
                }
                return Ok(());
            }
            let f = self.file.as_ref().expect("open");
            self.fingerprint = self.read_fingerprint(f, self.pos.offset);
        }
    }

    fn find_sibling(&self, matches: impl Fn(&Path, &File) -> bool) -> Result<Option<PathBuf>> {
        let dir = self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else { return Ok(None) };
        let mut cands: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
            .map_err(Error::io("listing", dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let compressed = [".gz", ".bz2", ".xz", ".zst"].iter().any(|s| n.ends_with(s));
                (n != name && n.starts_with(name) && !compressed).then(|| e.path())
            })
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        cands.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, p) in cands {
            if let Ok(f) = File::open(&p)
                && matches(&p, &f)
            {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(path: &Path, lines: std::ops::Range<u32>) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        for i in lines {
            writeln!(f, "1700000000,node-{i},Node Reset,Warning,,line {i} padding padding").unwrap();
        }
    }

    fn drain(t: &mut Tailer) -> Vec<String> {
        let mut all = Vec::new();
        loop {
            let mut out = Vec::new();
            t.poll(100, &mut out).unwrap();
            if out.is_empty() {
                return all;
            }
            all.extend(out.into_iter().map(|l| String::from_utf8(l.bytes).unwrap()));
        }
    }

    fn ids(lines: &[String]) -> Vec<u32> {
        lines.iter().map(|l| l.rsplit("line ").next().unwrap().split(' ').next().unwrap().parse().unwrap()).collect()
    }

    #[test]
    fn rename_create_and_restart_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("event.log");
        append(&log, 0..10);
        let mut t = Tailer::new(log.clone(), InputPos::default());
        assert_eq!(ids(&drain(&mut t)), (0..10).collect::<Vec<_>>());
        append(&log, 10..15);
        std::fs::rename(&log, dir.path().join("event.log.1")).unwrap();
        append(&log, 15..20);
        assert_eq!(ids(&drain(&mut t)), (10..20).collect::<Vec<_>>());
        // Restart after another rotation that happened while down.
        let saved = t.position();
        append(&log, 20..25);
        std::fs::rename(&log, dir.path().join("event.log.2")).unwrap();
        append(&log, 25..30);
        let mut t = Tailer::new(log.clone(), saved);
        assert_eq!(ids(&drain(&mut t)), (20..30).collect::<Vec<_>>());
    }

    #[test]
    fn copy_truncate_reads_the_tail_from_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("event.log");
        append(&log, 0..10);
        let mut t = Tailer::new(log.clone(), InputPos::default());
        assert_eq!(drain(&mut t).len(), 10);
        append(&log, 10..13);
        std::fs::copy(&log, dir.path().join("event.log.1")).unwrap();
        std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(0).unwrap();
        // Enough new content to pass our old offset: detected by the fingerprint.
        append(&log, 13..40);
        assert_eq!(ids(&drain(&mut t)), (10..40).collect::<Vec<_>>());
    }

    #[test]
    fn partial_lines_wait_for_their_newline() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("event.log");
        std::fs::write(&log, b"a,b\npart").unwrap();
        let mut t = Tailer::new(log.clone(), InputPos::default());
        assert_eq!(drain(&mut t), vec!["a,b".to_string()]);
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"ial\n").unwrap();
        assert_eq!(drain(&mut t), vec!["partial".to_string()]);
        assert_eq!(t.position().line, 2);
    }
}
