//! What a capacity run observes, each on a thread of its own: the marker
//! events (sent by the generator; the poller asks the query service for
//! those not yet seen), and the sampler (the generator's counters, the
//! ingest consumer group's lag read from Kafka, and ingest's `/metrics`:
//! events in, event rows, RSS).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use estate_poller::wire::{EventFields, Stamp, encode_event};
use estate_schemas::{Level, derive_event_id};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::report::{MarkerRecord, Sample};
use crate::error::{Error, Result};
use crate::estate::Msg;
use crate::verify;

/// How long one marker query or one scrape may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many markers per query (the oldest unseen first).
const MAX_IDS_PER_QUERY: usize = 500;
/// Marker queries look back this far before the oldest unseen marker's
/// event time. The stored time is the marker's own, so this is only a
/// margin; it is kept short because every file in the window is opened by
/// every poll, and the probe should not be a load of its own.
const LOOKBACK_MS: i64 = 5_000;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One marker in flight.
#[derive(Debug, Clone)]
pub(crate) struct Marker {
    /// Its event id.
    pub event_id: String,
    /// Its event time (ms since the epoch).
    pub time_ms: i64,
    /// Step and timings.
    pub rec: MarkerRecord,
}

/// State shared by the generator and the probe threads.
#[derive(Debug)]
pub(crate) struct Probes {
    start: Instant,
    /// Every marker sent.
    pub markers: Mutex<Vec<Marker>>,
    /// Every sample taken.
    pub samples: Mutex<Vec<Sample>>,
    /// Set to end the probe threads.
    pub stop: AtomicBool,
    /// The offered rate now (`f64` bits).
    pub offered: AtomicU64,
    /// Load messages handed to the producer.
    pub sent: AtomicU64,
    /// Messages the broker acknowledged.
    pub acked: AtomicU64,
    /// Marker queries answered.
    pub queries: AtomicU64,
    /// Marker queries that failed.
    pub query_errors: AtomicU64,
    /// Scrapes that failed.
    pub scrape_errors: AtomicU64,
}

impl Probes {
    pub(crate) fn new() -> Probes {
        Probes {
            start: Instant::now(),
            markers: Mutex::default(),
            samples: Mutex::default(),
            stop: AtomicBool::new(false),
            offered: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            query_errors: AtomicU64::new(0),
            scrape_errors: AtomicU64::new(0),
        }
    }

    /// Seconds since the run started.
    pub(crate) fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Sleeps up to `d`, waking early when told to stop; whether to go on.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }
}

/// The marker poller of one run: a tenant and poller of its own, with a
/// contiguous seq (so `loss_audit` has nothing to say about it).
#[derive(Debug)]
pub(crate) struct MarkerSource {
    /// Tenant.
    pub tenant: String,
    poller: String,
    epoch: i64,
    seq: i64,
    topic: String,
    run_id: String,
    buf: Vec<u8>,
}

impl MarkerSource {
    pub(crate) fn new(tenant: &str, run_id: &str, epoch: i64, topic: &str, per_tenant_topic: bool) -> MarkerSource {
        MarkerSource {
            tenant: tenant.to_owned(),
            poller: format!("capacity-{run_id}"),
            epoch,
            seq: 0,
            topic: if per_tenant_topic { format!("{topic}.{tenant}") } else { topic.to_owned() },
            run_id: run_id.to_owned(),
            buf: Vec::with_capacity(512),
        }
    }

    /// The next marker message, stamped `now_ms`, and its event id.
    pub(crate) fn next(&mut self, now_ms: i64) -> (Msg, String) {
        self.seq += 1;
        let element = format!("{}-{}", self.run_id, self.seq);
        let (node, event) = ("capacity-marker", "Capacity Marker");
        let event_id = derive_event_id(&self.tenant, node, event, &element, None, now_ms);
        let fields = EventFields {
            event_id: &event_id,
            time_ms: now_ms,
            node,
            node_uuid: None,
            event,
            element: &element,
            level: Level::Normal,
            state: None,
            details: "estate loadgen --capacity marker",
            attrs: None,
        };
        self.buf.clear();
        encode_event(&mut self.buf, &Stamp { tenant: &self.tenant, poller: &self.poller, epoch: self.epoch, seq: self.seq }, &fields);
        let msg = Msg { topic: self.topic.clone(), key: Some(self.tenant.as_bytes().to_vec()), payload: self.buf.clone() };
        (msg, event_id)
    }
}

/// The query that finds which of `ids` are queryable.
pub(crate) fn marker_sql(tenant: &str, since_ms: i64, ids: &[&str]) -> String {
    let list: Vec<String> = ids.iter().map(|i| format!("'{}'", i.replace('\'', "''"))).collect();
    format!(
        "SELECT event_id FROM events WHERE tenant = '{}' AND time >= to_timestamp_millis({since_ms}) AND event_id IN ({})",
        tenant.replace('\'', "''"),
        list.join(", ")
    )
}

/// Asks the query service every `interval` for the markers not yet seen
/// and stamps each with the moment the first query whose answer held it
/// was sent.
pub(crate) fn poll_markers(p: &Probes, query_url: &str, token: &str, tenant: &str, interval: Duration) {
    while p.pause(interval) {
        let (ids, since) = {
            let m = lock(&p.markers);
            let pending: Vec<&Marker> = m.iter().filter(|m| m.rec.seen_s.is_none()).take(MAX_IDS_PER_QUERY).collect();
            let since = pending.iter().map(|m| m.time_ms).min().unwrap_or(0) - LOOKBACK_MS;
            (pending.iter().map(|m| m.event_id.clone()).collect::<Vec<_>>(), since)
        };
        if ids.is_empty() {
            continue;
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // The service pins its snapshot when it plans the query (after
        // admission and parsing), so a marker in the answer was queryable
        // about when the query was sent, not only when the answer came.
        let asked = p.now_s();
        match verify::sql(query_url, token, &marker_sql(tenant, since, &refs), PROBE_TIMEOUT) {
            Ok(rows) => {
                p.queries.fetch_add(1, Ordering::Relaxed);
                let found: std::collections::HashSet<&str> = rows.iter().filter_map(|r| r["event_id"].as_str()).collect();
                for m in lock(&p.markers).iter_mut().filter(|m| m.rec.seen_s.is_none() && found.contains(m.event_id.as_str())) {
                    m.rec.seen_s = Some(asked);
                }
            }
            Err(e) => {
                if p.query_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    tracing::warn!(error = %e, "marker query failed");
                }
            }
        }
    }
}

/// What one scrape of ingest's `/metrics` found (summed over instances).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Scrape {
    /// `estate_ingest_events_in_total`.
    pub events_in: Option<u64>,
    /// `estate_ingest_rows_written_total{table="events"}`.
    pub event_rows: Option<u64>,
    /// `estate_ingest_resident_memory_bytes`.
    pub rss: Option<u64>,
}

fn add<T: std::ops::Add<Output = T> + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, None) | (None, x) => x,
    }
}

impl Scrape {
    fn merge(self, o: Scrape) -> Scrape {
        Scrape {
            events_in: add(self.events_in, o.events_in),
            event_rows: add(self.event_rows, o.event_rows),
            rss: add(self.rss, o.rss),
        }
    }
}

/// Reads the figures a capacity run needs from Prometheus text.
pub(crate) fn parse_metrics(text: &str) -> Scrape {
    let samples = crate::status::parse_metrics(text);
    let sum = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .filter(|s| s.name == name && label.is_none_or(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v)))
            .map(|s| s.value)
            .reduce(|a, b| a + b)
    };
    let events_in = sum("estate_ingest_events_in_total", None).map(|v| v as u64);
    Scrape {
        events_in,
        // Ingest answered but has not committed an event yet: none written.
        event_rows: sum("estate_ingest_rows_written_total", Some(("table", "events"))).map(|v| v as u64).or(events_in.map(|_| 0)),
        rss: sum("estate_ingest_resident_memory_bytes", None).map(|v| v as u64),
    }
}

/// Scrapes every URL and sums what they report.
pub(crate) fn scrape(urls: &[String]) -> Result<Scrape> {
    let mut s = Scrape::default();
    for u in urls {
        s = s.merge(parse_metrics(&verify::http_get(u, PROBE_TIMEOUT)?));
    }
    Ok(s)
}

/// The ingest consumer group's lag, read from Kafka: over every partition
/// of the topics, the high watermark minus the group's committed offset
/// (ingest commits offsets right after each Delta commit, so this is what
/// is not yet queryable). It never joins the group.
pub(crate) struct GroupLag {
    consumer: BaseConsumer,
    group: String,
    topics: Vec<String>,
}

impl std::fmt::Debug for GroupLag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupLag").field("group", &self.group).field("topics", &self.topics).finish()
    }
}

impl GroupLag {
    pub(crate) fn new(brokers: &str, kafka_opts: &[(String, String)], group: &str, topics: Vec<String>) -> Result<GroupLag> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", brokers).set("group.id", group).set("enable.auto.commit", "false");
        for (k, v) in kafka_opts {
            cc.set(k, v);
        }
        let consumer: BaseConsumer = cc.create().map_err(Error::kafka("creating the lag reader"))?;
        Ok(GroupLag { consumer, group: group.to_owned(), topics })
    }

    /// Total lag now; topics that do not exist yet count as none.
    pub(crate) fn lag(&self) -> Result<i64> {
        let mut tpl = TopicPartitionList::new();
        for t in &self.topics {
            let md = self.consumer.fetch_metadata(Some(t), PROBE_TIMEOUT).map_err(Error::kafka(format!("metadata of {t}")))?;
            for mt in md.topics().iter().filter(|mt| mt.name() == t && mt.error().is_none()) {
                for part in mt.partitions() {
                    tpl.add_partition(t, part.id());
                }
            }
        }
        let committed = self.consumer.committed_offsets(tpl, PROBE_TIMEOUT).map_err(Error::kafka(format!("offsets of group {}", self.group)))?;
        let mut lag = 0;
        for e in committed.elements() {
            let (low, high) = self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), PROBE_TIMEOUT)
                .map_err(Error::kafka(format!("watermarks of {}/{}", e.topic(), e.partition())))?;
            let at = match e.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            lag += (high - at).max(0);
        }
        Ok(lag)
    }
}

/// Records a [`Sample`] every `interval` until told to stop.
pub(crate) fn sample(p: &Probes, urls: &[String], lag: &GroupLag, interval: Duration) {
    loop {
        let t_s = p.now_s();
        let failed = |e: Error| {
            if p.scrape_errors.fetch_add(1, Ordering::Relaxed) < 5 {
                tracing::warn!(error = %e, "sampling ingest failed");
            }
        };
        let s = scrape(urls).map_err(failed).unwrap_or_default();
        let lag = lag.lag().map_err(failed).ok();
        lock(&p.samples).push(Sample {
            t_s,
            offered_rate: f64::from_bits(p.offered.load(Ordering::Relaxed)),
            sent: p.sent.load(Ordering::Relaxed),
            acked: p.acked.load(Ordering::Relaxed),
            events_in: s.events_in,
            event_rows: s.event_rows,
            lag,
            rss_bytes: s.rss,
        });
        let next = Duration::from_secs_f64((t_s + interval.as_secs_f64() - p.now_s()).max(0.0));
        if !p.pause(next) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use estate_schemas::{DecodeContext, Record, decode};

    use super::*;

    #[test]
    fn metrics_are_read_from_prometheus_text() {
        let text = "# HELP estate_ingest_events_in Kafka messages consumed\n\
            # TYPE estate_ingest_events_in counter\n\
            estate_ingest_events_in_total 1234\n\
            estate_ingest_rows_written_total{table=\"events\"} 1000\n\
            estate_ingest_rows_written_total{table=\"receipts\"} 77\n\
            estate_ingest_consumer_lag{topic=\"estate.events\",partition=\"0\"} 10\n\
            estate_ingest_resident_memory_bytes_other 5\n\
            estate_ingest_resident_memory_bytes 52428800\n\
            # EOF\n";
        let s = parse_metrics(text);
        assert_eq!(s, Scrape { events_in: Some(1234), event_rows: Some(1000), rss: Some(52_428_800) });
        assert_eq!(parse_metrics("estate_ingest_events_in_total 5\n"), Scrape { events_in: Some(5), event_rows: Some(0), ..Scrape::default() });
        assert_eq!(s.merge(parse_metrics("estate_ingest_resident_memory_bytes 8\n")).rss, Some(52_428_808));
        assert_eq!(parse_metrics("garbage\n{}\n"), Scrape::default());
    }

    #[test]
    fn markers_are_valid_events_with_contiguous_seq_and_unique_ids() {
        let mut src = MarkerSource::new("capacity-markers", "r1", 7, "estate.events", false);
        let now = 1_800_000_000_000;
        let mut ids = std::collections::HashSet::new();
        for i in 0..3 {
            let (m, id) = src.next(now);
            assert_eq!((m.topic.as_str(), m.key.as_deref()), ("estate.events", Some(&b"capacity-markers"[..])));
            let ctx = DecodeContext { tenant: Some("capacity-markers"), max_bytes: 10_000, now_ms: now, max_future_ms: 1000 };
            let Ok(Record::Event(e)) = decode(&m.payload, &ctx) else { panic!("not an event: {}", String::from_utf8_lossy(&m.payload)) };
            assert_eq!((&*e.event_id, e.origin.seq, &*e.origin.poller), (id.as_str(), i + 1, "capacity-r1"));
            assert!(ids.insert(id));
        }
        let mut per_tenant = MarkerSource::new("capacity-markers", "r1", 7, "estate.events", true);
        assert_eq!(per_tenant.next(now).0.topic, "estate.events.capacity-markers");
        let sql = marker_sql("t'x", 5000, &["ab", "c'd"]);
        assert_eq!(sql, "SELECT event_id FROM events WHERE tenant = 't''x' AND time >= to_timestamp_millis(5000) AND event_id IN ('ab', 'c''d')");
    }
}
