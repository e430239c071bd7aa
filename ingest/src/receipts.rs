//! Seq receipts: per (tenant, poller, epoch), the contiguous seq ranges seen
//! in one flush, with how many messages in each range were stored, dropped as
//! duplicates, or rejected.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use estate_schemas::{ReceiptRow, ReceiptsBuilder};

/// Tenant used in receipts of messages that had no valid tenant at all.
pub(crate) const UNKNOWN_TENANT: &str = "_unknown";

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written to a table.
    Stored,
    /// Dropped by the dedup window.
    Duplicate,
    /// Sent to the DLQ.
    Rejected,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    start: i64,
    end: i64,
    counts: [i64; 3],
}

#[derive(Debug)]
struct Stream {
    tenant: String,
    poller: String,
    epoch: i64,
    runs: Vec<Run>,
}

/// Accumulates receipts until the next flush.
#[derive(Debug, Default)]
pub struct Receipts {
    index: HashMap<u64, Vec<usize>, RandomState>,
    streams: Vec<Stream>,
    messages: usize,
}

fn stream_hash(tenant: &str, poller: &str, epoch: i64) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(tenant.as_bytes());
    h.update(&[0x1f]);
    h.update(poller.as_bytes());
    h.update(&epoch.to_le_bytes());
    h.digest()
}

impl Receipts {
    /// Records one message.
    pub fn record(&mut self, tenant: &str, poller: &str, epoch: i64, seq: i64, outcome: Outcome) {
        self.messages += 1;
        let idx = outcome as usize;
        // Look up by borrowed parts: no allocation on the hot path.
        let slot = self.index.entry(stream_hash(tenant, poller, epoch)).or_default();
        let found = slot.iter().copied().find(|&i| {
            let s = &self.streams[i];
            s.epoch == epoch && s.tenant == tenant && s.poller == poller
        });
        let i = match found {
            Some(i) => i,
            None => {
                self.streams.push(Stream {
                    tenant: tenant.to_owned(),
                    poller: poller.to_owned(),
                    epoch,
                    runs: Vec::new(),
                });
                slot.push(self.streams.len() - 1);
                self.streams.len() - 1
            }
        };
        let runs = &mut self.streams[i].runs;
        if let Some(last) = runs.last_mut()
            && (last.start..=last.end + 1).contains(&seq)
        {
            last.end = last.end.max(seq);
            last.counts[idx] += 1;
            return;
        }
        let mut counts = [0; 3];
        counts[idx] = 1;
        runs.push(Run { start: seq, end: seq, counts });
    }

    /// Messages recorded since the last drain.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Moves the held receipts into `out` as merged, sorted ranges.
    pub fn drain_into(&mut self, out: &mut ReceiptsBuilder) {
        self.messages = 0;
        self.index.clear();
        for Stream { tenant, poller, epoch, mut runs } in self.streams.drain(..) {
            runs.sort_by_key(|r| (r.start, r.end));
            let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
            for r in runs {
                match merged.last_mut() {
                    Some(m) if r.start <= m.end + 1 => {
                        m.end = m.end.max(r.end);
                        for i in 0..3 {
                            m.counts[i] += r.counts[i];
                        }
                    }
                    _ => merged.push(r),
                }
            }
            for m in merged {
                out.push(ReceiptRow {
                    tenant: tenant.clone(),
                    poller: poller.clone(),
                    epoch,
                    seq_start: m.start,
                    seq_end: m.end,
                    stored: m.counts[0],
                    duplicates: m.counts[1],
                    rejected: m.counts[2],
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_count() {
        let mut r = Receipts::default();
        for s in [1, 2, 3, 5, 4, 7, 3] {
            r.record("acme", "p1", 0, s, if s == 3 { Outcome::Duplicate } else { Outcome::Stored });
        }
        r.record("acme", "p1", 0, 8, Outcome::Rejected);
        r.record("acme", "p2", 1, 1, Outcome::Stored);
        let mut b = ReceiptsBuilder::default();
        r.drain_into(&mut b);
        let batch = b.finish(0).unwrap();
        assert_eq!(batch.num_rows(), 3, "p1: 1-5 and 7-8; p2: 1-1");
        assert!(r.is_empty());
    }
}
