//! The spool's state file: the acknowledged position, the next seq, the
//! epoch and the input position, written atomically (write, fsync, rename,
//! fsync the directory).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A position in the input: file identity (inode), byte offset after the last
/// consumed line, and that line's number (1-based; 0 before the first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPos {
    /// Inode of the file read (0 for a stream such as stdin).
    pub ino: u64,
    /// Byte offset just after the last consumed line.
    pub offset: u64,
    /// Number of lines consumed in that file.
    pub line: u64,
}

/// A position in the spool: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SpoolPos {
    /// Segment number (the file `<segment>.seg`).
    pub segment: u64,
    /// Byte offset within the segment.
    pub offset: u64,
}

/// Where the last acknowledged record landed in Kafka.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaCoord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The persisted state of a spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolState {
    /// Format version (1).
    pub format: u32,
    /// Tenant the spool belongs to.
    pub tenant: String,
    /// Poller id the spool belongs to.
    pub poller: String,
    /// Current epoch.
    pub epoch: i64,
    /// Next seq to assign in `epoch`.
    pub next_seq: i64,
    /// Everything before this position has been acknowledged by the broker.
    pub acked: SpoolPos,
    /// `(epoch, seq)` of the last acknowledged record, if any.
    pub acked_seq: Option<(i64, i64)>,
    /// Where the last acknowledged record landed.
    pub kafka: Option<KafkaCoord>,
    /// Input position as of `next_seq`.
    pub input: InputPos,
}

pub(crate) const STATE_FILE: &str = "state.json";

/// Reads the state file, `None` when absent.
pub(crate) fn load(dir: &Path) -> Result<Option<SpoolState>> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Spool { path, detail: format!("unreadable state file: {e}") }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}

/// Writes the state file atomically and durably.
pub(crate) fn store(dir: &Path, state: &SpoolState, fsync: bool) -> Result<()> {
    let tmp = dir.join("state.json.tmp");
    let path = dir.join(STATE_FILE);
    let bytes = serde_json::to_vec(state).map_err(|e| Error::Internal(format!("encoding spool state: {e}")))?;
    let mut f = File::create(&tmp).map_err(Error::io("creating", &tmp))?;
    f.write_all(&bytes).map_err(Error::io("writing", &tmp))?;
    if fsync {
        f.sync_all().map_err(Error::io("fsync", &tmp))?;
    }
    drop(f);
    std::fs::rename(&tmp, &path).map_err(Error::io("renaming state file to", &path))?;
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Fsyncs a directory so that creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::io("fsync directory", PathBuf::from(dir)))
}
