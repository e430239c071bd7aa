//! The state ingest keeps for one Kafka partition, and the per-message logic.
//!
//! Every table has its own watermark: the last offset it holds for this
//! partition (its Delta application transaction version). A message at
//! offset `o` is written to table `t` only when `o > committed[t]`, so replay
//! after a crash, even one that fell between the commits of two tables,
//! writes each row exactly once. DLQ records travel with the `receipts`
//! watermark and the deduplicated stream with the Kafka committed offset.

use std::sync::Arc;

use estate_schemas::{
    DecodeContext, EventsBuilder, HeartbeatsBuilder, NodesBuilder, Reason, Record, Source,
    TENANT_TOPIC_PREFIX, decode,
};

use crate::dedup::{self, DedupWindow, Verdict};
use crate::receipts::{Outcome, Receipts, UNKNOWN_TENANT};
use crate::table::TableKind;

/// A Kafka topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A rejected message on its way to the DLQ.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original payload, unchanged.
    pub payload: Vec<u8>,
    /// Why.
    pub reason: Reason,
    /// Source offset.
    pub offset: i64,
    /// When ingest rejected it (UTC ms).
    pub ingested_at_ms: i64,
}

/// A stored event on its way to the deduplicated stream.
#[derive(Debug, Clone)]
pub struct DedupedRecord {
    /// Tenant (the record key).
    pub tenant: String,
    /// Event id (also a header).
    pub event_id: String,
    /// Canonical JSON.
    pub json: Vec<u8>,
}

/// Where a partition resumes, as read from the tables and Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    /// Last offset held by each table (`-1`: none), indexed by [`TableKind::idx`].
    pub committed: [i64; 4],
    /// Last offset whose stored events were published to the deduplicated stream.
    pub deduped: i64,
}

impl Watermarks {
    /// The first offset to read.
    pub fn resume_at(&self) -> i64 {
        self.committed.iter().copied().min().unwrap_or(-1).min(self.deduped) + 1
    }
}

/// Counters of one partition since the last flush; published per flush.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Messages consumed.
    pub messages: u64,
    /// Events dropped as duplicates.
    pub duplicates: u64,
    /// Rejections by reason code.
    pub rejected: Vec<(Reason, u64)>,
    /// Offsets the broker no longer had when they were due (deleted by its
    /// retention before they were read), or transaction markers.
    pub skipped_offsets: u64,
}

/// Settings the per-message logic needs.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Payloads above this are `too_large`.
    pub max_message_bytes: usize,
    /// Allowed event-time skew into the future.
    pub max_future_ms: i64,
    /// Whether the deduplicated stream is on.
    pub deduped_enabled: bool,
    /// Dedup window.
    pub dedup_window_ms: i64,
    /// Dedup key bound per partition.
    pub dedup_max_keys: usize,
}

/// One partition's state.
#[derive(Debug)]
pub struct PartitionState {
    /// Which partition.
    pub tp: TopicPartition,
    topic_tenant: Option<String>,
    /// Table watermarks.
    pub marks: Watermarks,
    /// Last offset processed (pending included).
    pub processed: i64,
    /// The dedup window.
    pub dedup: DedupWindow,
    /// Pending `events` rows.
    pub events: EventsBuilder,
    /// Pending `nodes` rows.
    pub nodes: NodesBuilder,
    /// Pending `heartbeats` rows.
    pub heartbeats: HeartbeatsBuilder,
    /// Pending receipts.
    pub receipts: Receipts,
    /// Pending DLQ records.
    pub dlq: Vec<DlqRecord>,
    /// Pending deduplicated-stream records.
    pub deduped: Vec<DedupedRecord>,
    /// Counters since the last flush.
    pub counts: Counts,
}

impl PartitionState {
    /// A partition resuming at `marks`, with a restored dedup window.
    pub fn new(tp: TopicPartition, marks: Watermarks, dedup: DedupWindow) -> Self {
        let topic_tenant = tp.topic.strip_prefix(TENANT_TOPIC_PREFIX).map(str::to_owned);
        Self {
            processed: marks.resume_at() - 1,
            tp,
            topic_tenant,
            marks,
            dedup,
            events: EventsBuilder::with_capacity(4096),
            nodes: NodesBuilder::default(),
            heartbeats: HeartbeatsBuilder::default(),
            receipts: Receipts::default(),
            dlq: Vec::new(),
            deduped: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// Rows waiting for the next flush, over all tables.
    pub fn pending_rows(&self) -> usize {
        self.events.len() + self.nodes.len() + self.heartbeats.len() + self.receipts.messages()
    }

    /// True when rows for `t` wait for the next flush.
    pub fn has_rows(&self, t: TableKind) -> bool {
        match t {
            TableKind::Events => !self.events.is_empty(),
            TableKind::Nodes => !self.nodes.is_empty(),
            TableKind::Heartbeats => !self.heartbeats.is_empty(),
            TableKind::Receipts => !self.receipts.is_empty(),
        }
    }

    /// True when `t` has offsets to commit.
    pub fn behind(&self, t: TableKind) -> bool {
        self.processed > self.marks.committed[t.idx()]
    }

    /// Processes one message. Pure CPU: no I/O happens here.
    pub fn process(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        now_ms: i64,
        cfg: &ProcessConfig,
    ) {
        if offset <= self.processed {
            return; // re-delivered after a seek
        }
        if offset > self.processed + 1 {
            self.counts.skipped_offsets += (offset - self.processed - 1) as u64;
        }
        self.processed = offset;
        let c = self.marks.committed;
        let receipts_new = offset > c[TableKind::Receipts.idx()];
        if receipts_new {
            self.counts.messages += 1;
        }
        let tenant: Option<&str> = match &self.topic_tenant {
            Some(t) => Some(t.as_str()),
            None => key.map(|k| std::str::from_utf8(k).unwrap_or("\u{fffd}")),
        };
        let ctx = DecodeContext {
            tenant,
            max_bytes: cfg.max_message_bytes,
            now_ms,
            max_future_ms: cfg.max_future_ms,
        };
        let src = Source { topic: &self.tp.topic, partition: self.tp.partition, offset };
        match decode(payload, &ctx) {
            Ok(record) => {
                // decode() succeeded, so the tenant is present and valid.
                let tenant = tenant.unwrap_or(UNKNOWN_TENANT);
                let outcome = match &record {
                    Record::Event(e) => {
                        let k = dedup::key(tenant, &e.event_id);
                        let events_new = offset > c[TableKind::Events.idx()];
                        let verdict = if events_new {
                            self.dedup.check_and_insert(k, now_ms, offset)
                        } else {
                            self.dedup.replayed(k, offset)
                        };
                        if verdict == Verdict::New {
                            if events_new {
                                self.events.append(tenant, e, now_ms, src);
                            }
                            if cfg.deduped_enabled && offset > self.marks.deduped {
                                self.deduped.push(DedupedRecord {
                                    tenant: tenant.to_owned(),
                                    event_id: e.event_id.to_string(),
                                    json: e.to_canonical_json(tenant),
                                });
                            }
                            Outcome::Stored
                        } else {
                            if receipts_new {
                                self.counts.duplicates += 1;
                            }
                            Outcome::Duplicate
                        }
                    }
                    Record::Node(n) => {
                        if offset > c[TableKind::Nodes.idx()] {
                            self.nodes.append(tenant, n, now_ms);
                        }
                        Outcome::Stored
                    }
                    Record::Heartbeat(h) => {
                        if offset > c[TableKind::Heartbeats.idx()] {
                            self.heartbeats.append(tenant, h, now_ms);
                        }
                        Outcome::Stored
                    }
                };
                if receipts_new {
                    let o = record.origin();
                    self.receipts.record(tenant, &o.poller, o.epoch, o.seq, outcome);
                }
            }
            Err(rej) => {
                if !receipts_new {
                    return;
                }
                let receipt_tenant = match tenant {
                    Some(t) if estate_schemas::is_valid_tenant(t) => t,
                    _ => UNKNOWN_TENANT,
                };
                if let Some(o) = &rej.origin {
                    self.receipts.record(receipt_tenant, &o.poller, o.epoch, o.seq, Outcome::Rejected);
                }
                match self.counts.rejected.iter_mut().find(|(r, _)| *r == rej.reason) {
                    Some((_, n)) => *n += 1,
                    None => self.counts.rejected.push((rej.reason, 1)),
                }
                self.dlq.push(DlqRecord {
                    key: key.map(<[u8]>::to_vec),
                    payload: payload.to_vec(),
                    reason: rej.reason,
                    offset,
                    ingested_at_ms: now_ms,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProcessConfig {
        ProcessConfig {
            max_message_bytes: 1 << 20,
            max_future_ms: 86_400_000,
            deduped_enabled: true,
            dedup_window_ms: 3_600_000,
            dedup_max_keys: 1000,
        }
    }

    fn ev(seq: i64, id: &str) -> Vec<u8> {
        format!(
            r#"{{"v":1,"type":"event","poller":"p1","epoch":0,"seq":{seq},"event_id":"{id}","time":1700000000000,"node":"n1","event":"Node Down","level":"Major","state":"down"}}"#
        )
        .into_bytes()
    }

    fn fresh(committed: [i64; 4]) -> PartitionState {
        let tp = TopicPartition { topic: "estate.events".into(), partition: 0 };
        let marks = Watermarks { committed, deduped: committed[0] };
        PartitionState::new(tp, marks, DedupWindow::new(3_600_000, 1000))
    }

    #[test]
    fn live_messages_dedup_and_reject() {
        let mut p = fresh([-1; 4]);
        let now = 1_700_000_000_000;
        p.process(0, Some(b"acme"), &ev(1, "a"), now, &cfg());
        p.process(1, Some(b"acme"), &ev(2, "a"), now, &cfg());
        p.process(2, Some(b"acme"), b"{not json", now, &cfg());
        p.process(3, None, &ev(3, "b"), now, &cfg());
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.counts.duplicates, 1);
        assert_eq!(p.dlq.len(), 2);
        assert_eq!(p.dlq[1].reason, Reason::MissingKey);
        assert_eq!(p.deduped.len(), 1);
        assert_eq!(p.processed, 3);
        assert_eq!(p.counts.skipped_offsets, 0);
        // Offsets 4..=6 were deleted by the broker before they were read.
        p.process(7, Some(b"acme"), &ev(4, "d"), now, &cfg());
        assert_eq!(p.counts.skipped_offsets, 3);
    }

    #[test]
    fn replay_between_table_commits_is_exact() {
        // Crash after `events` committed offsets 0..=1 but before `receipts` did.
        let mut p = fresh([1, 1, 1, -1]);
        p.dedup.insert(dedup::key("acme", "a"), 5, 0);
        let now = 1_700_000_000_000;
        p.process(0, Some(b"acme"), &ev(1, "a"), now, &cfg());
        p.process(1, Some(b"acme"), &ev(2, "a"), now, &cfg());
        p.process(2, Some(b"acme"), &ev(3, "c"), now, &cfg());
        assert_eq!(p.events.len(), 1, "only offset 2 is new to the events table");
        let mut b = estate_schemas::ReceiptsBuilder::default();
        p.receipts.drain_into(&mut b);
        let batch = b.finish(now).unwrap();
        let col = |n: &str| {
            batch.column_by_name(n).unwrap().as_any().downcast_ref::<deltalake::arrow::array::Int64Array>().unwrap().value(0)
        };
        assert_eq!((col("seq_start"), col("seq_end")), (1, 3));
        assert_eq!((col("stored"), col("duplicates"), col("rejected")), (2, 1, 0));
    }
}
