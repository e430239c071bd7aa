//! The deduplication window of one Kafka partition.
//!
//! Keys are `(tenant, event_id)`, hashed to 128 bits (XXH3-128), each with the
//! ingest time it was first stored and the Kafka offset it was stored from.
//! A message is a duplicate when its key was stored less than `window` ago.
//! Memory is bounded: past `max_keys` the oldest keys are evicted first (the
//! window then effectively shortens; `estate_ingest_dedup_evictions_total`
//! says so).
//!
//! The offset kept with each key is what makes replay after a crash exact:
//! a message at an offset the `events` table already covers was stored if
//! and only if the restored key carries that very offset.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

/// A hashed `(tenant, event_id)`.
pub(crate) type Key = u128;

/// Hashes a dedup key.
pub fn key(tenant: &str, event_id: &str) -> Key {
    let (t, e) = (tenant.as_bytes(), event_id.as_bytes());
    let mut buf = [0u8; 256];
    let n = t.len() + 1 + e.len();
    if n <= buf.len() {
        // One-shot over the joined bytes: the same hash as streaming them,
        // without the streaming state's set-up (the usual case by far).
        buf[..t.len()].copy_from_slice(t);
        buf[t.len()] = 0x1f;
        buf[t.len() + 1..n].copy_from_slice(e);
        return xxhash_rust::xxh3::xxh3_128(&buf[..n]);
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(t);
    h.update(&[0x1f]);
    h.update(e);
    h.digest128()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    stored_ms: i64,
    offset: i64,
}

/// What the window says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First sighting within the window: store it.
    New,
    /// Seen within the window: drop it.
    Duplicate,
}

/// The window.
#[derive(Debug)]
pub struct DedupWindow {
    window_ms: i64,
    max_keys: usize,
    /// Keyed by a hash already, so the map hashes it with foldhash (seeded
    /// per map, one multiply) instead of std's SipHash, which was ~5 % of the
    /// in-process pipeline.
    keys: HashMap<Key, Entry, RandomState>,
    order: VecDeque<(i64, Key)>,
    evictions: u64,
}

impl DedupWindow {
    /// An empty window.
    pub fn new(window_ms: i64, max_keys: usize) -> Self {
        Self {
            window_ms,
            max_keys: max_keys.max(1),
            keys: HashMap::default(),
            order: VecDeque::new(),
            evictions: 0,
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys evicted by the size bound so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Checks a live message and, when new, records it as stored now at `offset`.
    pub fn check_and_insert(&mut self, k: Key, now_ms: i64, offset: i64) -> Verdict {
        // One probe of the map for both the check and the insert.
        let stored = Entry { stored_ms: now_ms, offset };
        match self.keys.entry(k) {
            Slot::Occupied(mut o) => {
                if o.get().stored_ms >= now_ms - self.window_ms {
                    return Verdict::Duplicate;
                }
                o.insert(stored);
            }
            Slot::Vacant(v) => {
                v.insert(stored);
            }
        }
        self.queue(k, now_ms);
        Verdict::New
    }

    /// Classifies a replayed message at an offset the `events` table already
    /// covers: it was stored if its key was stored from this very offset.
    pub fn replayed(&self, k: Key, offset: i64) -> Verdict {
        match self.keys.get(&k) {
            Some(e) if e.offset == offset => Verdict::New,
            _ => Verdict::Duplicate,
        }
    }

    /// Records a key as stored (used by restore and by live inserts).
    pub fn insert(&mut self, k: Key, stored_ms: i64, offset: i64) {
        self.keys.insert(k, Entry { stored_ms, offset });
        self.queue(k, stored_ms);
    }

    /// Queues a key just stored for expiry, and evicts past the size bound.
    fn queue(&mut self, k: Key, stored_ms: i64) {
        self.order.push_back((stored_ms, k));
        while self.keys.len() > self.max_keys {
            if !self.pop_oldest() {
                break;
            }
            self.evictions += 1;
        }
    }

    /// Drops keys older than the window. Keys stored at offsets above
    /// `keep_above_offset` are kept regardless, because replay may still
    /// need them to classify messages exactly (pass `i64::MAX` when no
    /// replay is in progress).
    pub fn expire(&mut self, now_ms: i64, keep_above_offset: i64) {
        let cutoff = now_ms - self.window_ms;
        while let Some(&(t, k)) = self.order.front() {
            if t >= cutoff {
                break;
            }
            if let Some(e) = self.keys.get(&k)
                && e.offset > keep_above_offset
                && e.stored_ms == t
            {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) -> bool {
        let Some((t, k)) = self.order.pop_front() else {
            return false;
        };
        // The queue may hold a stale entry for a key that was re-inserted later.
        if self.keys.get(&k).is_some_and(|e| e.stored_ms == t) {
            self.keys.remove(&k);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_window_only() {
        let mut w = DedupWindow::new(1000, 100);
        let k = key("acme", "e1");
        assert_eq!(w.check_and_insert(k, 10_000, 1), Verdict::New);
        assert_eq!(w.check_and_insert(k, 10_500, 2), Verdict::Duplicate);
        assert_eq!(w.check_and_insert(k, 11_001, 3), Verdict::New, "outside window");
        assert_ne!(key("acme", "e1"), key("beta", "e1"), "tenant is part of the key");
    }

    #[test]
    fn key_is_xxh3_of_tenant_separator_event_id() {
        let streamed = |t: &str, e: &str| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(t.as_bytes());
            h.update(&[0x1f]);
            h.update(e.as_bytes());
            h.digest128()
        };
        let long = "x".repeat(300);
        for (t, e) in [("acme", "e1"), ("", ""), ("acme", long.as_str()), (long.as_str(), "e"), ("t", &long[..254])] {
            assert_eq!(key(t, e), streamed(t, e), "{} + {} bytes", t.len(), e.len());
        }
    }

    #[test]
    fn replay_uses_offsets() {
        let mut w = DedupWindow::new(1000, 100);
        let k = key("acme", "e1");
        w.insert(k, 5, 42);
        assert_eq!(w.replayed(k, 42), Verdict::New);
        assert_eq!(w.replayed(k, 43), Verdict::Duplicate);
        assert_eq!(w.replayed(key("acme", "zz"), 44), Verdict::Duplicate);
    }

    #[test]
    fn bounded_and_expiring() {
        let mut w = DedupWindow::new(1000, 3);
        for i in 0..5 {
            w.insert(key("t", &i.to_string()), i, i);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.evictions(), 2);
        w.expire(1004, i64::MAX);
        assert_eq!(w.len(), 1, "keys stored at 2 and 3 are out of the window at 1004");
        w.insert(key("t", "x"), 10, 100);
        w.expire(5000, 99);
        assert_eq!(w.len(), 1, "kept: offset 100 is above the replay watermark");
    }
}
