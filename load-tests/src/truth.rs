//! The ground-truth file `estate loadgen` writes and `estate verify` reads.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What one tenant should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantTruth {
    /// Distinct events (distinct event_id): rows expected in `events`.
    pub distinct_events: u64,
    /// Event messages sent, copies included.
    pub event_messages: u64,
}

/// The last seq one poller incarnation sent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PollerTruth {
    /// Tenant the receipts are under (`_unknown` for messages without a valid tenant).
    pub tenant: String,
    /// Poller id.
    pub poller: String,
    /// Epoch.
    pub epoch: i64,
    /// Highest seq sent (every seq from 1 to it was sent).
    pub max_seq: i64,
}

/// Messages sent, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// All messages.
    pub messages: u64,
    /// Event messages from the primary poller of each site.
    pub events: u64,
    /// Exact re-sends of an event message (same poller, same seq).
    pub duplicates: u64,
    /// Event copies sent by the mirror of a pair.
    pub mirror_copies: u64,
    /// Node snapshots.
    pub node_snapshots: u64,
    /// Heartbeats.
    pub heartbeats: u64,
    /// Malformed messages (one per reject).
    pub malformed: u64,
}

/// The ground truth of one loadgen run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// Run id; every malformed payload contains `dlq_marker`.
    pub run_id: String,
    /// Substring of every malformed payload of this run (to find them in the DLQ).
    pub dlq_marker: String,
    /// Start, RFC 3339.
    pub started_at: String,
    /// Events topic (or the prefix of per-tenant topics).
    pub topic: String,
    /// Whether per-tenant topics were used.
    pub per_tenant_topic: bool,
    /// Per tenant.
    pub tenants: BTreeMap<String, TenantTruth>,
    /// Max seq per (tenant, poller, epoch), junk pollers included.
    pub pollers: Vec<PollerTruth>,
    /// Rejects expected in the DLQ, by reason code.
    pub rejects: BTreeMap<String, u64>,
    /// What was sent.
    pub sent: Sent,
}

impl Truth {
    /// Writes the file (pretty JSON).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::Config(format!("encoding truth: {e}")))?;
        std::fs::write(path, text).map_err(Error::io("writing truth file", path))
    }

    /// Reads the file.
    pub fn read(path: &Path) -> Result<Truth> {
        let text = std::fs::read(path).map_err(Error::io("reading truth file", path))?;
        serde_json::from_slice(&text).map_err(|e| Error::Config(format!("truth file {}: {e}", path.display())))
    }
}
