//! `estate dlq inspect`: counts by reason and source topic, and samples.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::ControlFlow;

use serde::Serialize;

use super::{DlqFilter, DlqRecord, DlqSource, Format, ScanReport, escape_bytes, scan};
use crate::error::Result;

/// Options of `estate dlq inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub source: DlqSource,

    #[command(flatten)]
    pub filter: DlqFilter,

    /// Samples shown per reason (the first ones in DLQ order).
    #[arg(long, env = "ESTATE_DLQ_SAMPLES", default_value_t = 3)]
    pub samples: usize,

    /// Characters of each sample's payload shown; the rest is counted, not shown.
    #[arg(long, env = "ESTATE_DLQ_MAX_PAYLOAD", default_value_t = 200)]
    pub max_payload: usize,

    /// Output format.
    #[arg(long, env = "ESTATE_FORMAT", value_enum, default_value = "table")]
    pub format: Format,
}

/// What `estate dlq inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The DLQ topic.
    pub topic: String,
    /// What was read.
    #[serde(flatten)]
    pub scan: ScanReport,
    /// Per reason code.
    pub by_reason: BTreeMap<String, ReasonCount>,
    /// Per source topic (`(none)` when the header is missing).
    pub by_source_topic: BTreeMap<String, SourceCount>,
}

/// Counts of one reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReasonCount {
    /// DLQ records.
    pub records: u64,
    /// Distinct rejected messages (source coordinates); lower than
    /// `records` when a reject was delivered twice or replayed and rejected again.
    pub distinct: u64,
    /// Earliest `estate-ingested-at`.
    pub first_ingested_at: Option<String>,
    /// Latest `estate-ingested-at`.
    pub last_ingested_at: Option<String>,
    /// The first records of this reason.
    pub samples: Vec<Sample>,
}

/// Counts of one source topic.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceCount {
    /// DLQ records.
    pub records: u64,
    /// Distinct rejected messages.
    pub distinct: u64,
}

/// One DLQ record, shown.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// DLQ partition.
    pub dlq_partition: i32,
    /// DLQ offset.
    pub dlq_offset: i64,
    /// Source topic.
    pub source_topic: Option<String>,
    /// Source partition.
    pub source_partition: Option<i32>,
    /// Source offset.
    pub source_offset: Option<i64>,
    /// When ingest rejected it.
    pub ingested_at: Option<String>,
    /// The key, escaped (`None`: no key).
    pub key: Option<String>,
    /// The payload, escaped and cut.
    pub payload: String,
    /// The payload's full size in bytes.
    pub payload_bytes: usize,
}

impl Sample {
    /// Shows a record, its key and payload escaped, the payload cut at `max` characters.
    pub fn of(r: &DlqRecord, max: usize) -> Sample {
        Sample {
            dlq_partition: r.partition,
            dlq_offset: r.offset,
            source_topic: r.source_topic.clone(),
            source_partition: r.source_partition,
            source_offset: r.source_offset,
            ingested_at: r.ingested_at.clone(),
            key: r.key.as_deref().map(|k| escape_bytes(k, 120)),
            payload: escape_bytes(&r.value, max),
            payload_bytes: r.value.len(),
        }
    }

    fn source(&self) -> String {
        let p = |v: Option<String>| v.unwrap_or_else(|| "?".into());
        format!(
            "{}/{}@{}",
            p(self.source_topic.clone()),
            p(self.source_partition.map(|x| x.to_string())),
            p(self.source_offset.map(|x| x.to_string()))
        )
    }
}

const NONE: &str = "(none)";

/// Accumulates an [`Inspection`] record by record.
#[derive(Debug)]
pub(crate) struct Tally {
    samples: usize,
    max_payload: usize,
    by_reason: BTreeMap<String, ReasonCount>,
    by_source: BTreeMap<String, SourceCount>,
    seen_reason: HashMap<String, HashSet<u128>>,
    seen_source: HashMap<String, HashSet<u128>>,
}

impl Tally {
    pub(crate) fn new(samples: usize, max_payload: usize) -> Tally {
        Tally {
            samples,
            max_payload,
            by_reason: BTreeMap::new(),
            by_source: BTreeMap::new(),
            seen_reason: HashMap::new(),
            seen_source: HashMap::new(),
        }
    }

    pub(crate) fn add(&mut self, r: &DlqRecord) {
        let id = r.source_id();
        let c = self.by_reason.entry(r.reason.clone()).or_default();
        c.records += 1;
        if self.seen_reason.entry(r.reason.clone()).or_default().insert(id) {
            c.distinct += 1;
        }
        if let Some(t) = &r.ingested_at {
            if c.first_ingested_at.as_ref().is_none_or(|f| t < f) {
                c.first_ingested_at = Some(t.clone());
            }
            if c.last_ingested_at.as_ref().is_none_or(|l| t > l) {
                c.last_ingested_at = Some(t.clone());
            }
        }
        if c.samples.len() < self.samples {
            c.samples.push(Sample::of(r, self.max_payload));
        }
        let topic = r.source_topic.clone().unwrap_or_else(|| NONE.to_owned());
        let s = self.by_source.entry(topic.clone()).or_default();
        s.records += 1;
        if self.seen_source.entry(topic).or_default().insert(id) {
            s.distinct += 1;
        }
    }

    pub(crate) fn finish(self, topic: &str, scan: ScanReport) -> Inspection {
        Inspection { topic: topic.to_owned(), scan, by_reason: self.by_reason, by_source_topic: self.by_source }
    }
}

/// Reads the selected range of the DLQ and counts it. Blocking. An
/// incomplete read is reported in [`ScanReport::complete`], not as an error.
pub fn inspect(args: &InspectArgs) -> Result<Inspection> {
    let mut tally = Tally::new(args.samples, args.max_payload);
    let scan = scan(&args.source, &args.filter, |r| {
        tally.add(&r);
        ControlFlow::Continue(())
    })?;
    Ok(tally.finish(&args.source.dlq_topic, scan))
}

/// The table form of an inspection.
pub fn render_inspection(i: &Inspection) -> String {
    let mut s = String::new();
    let ranges: Vec<String> =
        i.scan.partitions.iter().map(|p| format!("{}:[{},{})", p.partition, p.start, p.end)).collect();
    let _ = writeln!(
        s,
        "DLQ {}: read {} records (partition:[from,to) {}), {} selected{}",
        i.topic,
        i.scan.read,
        if ranges.is_empty() { "none".to_owned() } else { ranges.join(" ") },
        i.scan.matched,
        if i.scan.complete { "" } else { " — INCOMPLETE, see the error below" }
    );
    if i.by_reason.is_empty() {
        s.push_str("no records\n");
        return s;
    }
    let w = i.by_reason.keys().map(String::len).max().unwrap_or(0).max("reason".len());
    let _ = writeln!(s, "\n{:w$}  {:>9}  {:>9}  {:24}  {:24}", "reason", "records", "distinct", "first ingested", "last ingested");
    for (reason, c) in &i.by_reason {
        let _ = writeln!(
            s,
            "{reason:w$}  {:>9}  {:>9}  {:24}  {:24}",
            c.records,
            c.distinct,
            c.first_ingested_at.as_deref().unwrap_or("-"),
            c.last_ingested_at.as_deref().unwrap_or("-")
        );
    }
    let w = i.by_source_topic.keys().map(String::len).max().unwrap_or(0).max("source topic".len());
    let _ = writeln!(s, "\n{:w$}  {:>9}  {:>9}", "source topic", "records", "distinct");
    for (topic, c) in &i.by_source_topic {
        let _ = writeln!(s, "{topic:w$}  {:>9}  {:>9}", c.records, c.distinct);
    }
    for (reason, c) in &i.by_reason {
        if c.samples.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\nsamples of {reason} ({} of {}):", c.samples.len(), c.records);
        for x in &c.samples {
            let _ = writeln!(
                s,
                "  dlq {}/{}  from {}  ingested {}  key {}  ({} bytes)\n    {}",
                x.dlq_partition,
                x.dlq_offset,
                x.source(),
                x.ingested_at.as_deref().unwrap_or("-"),
                x.key.as_deref().map_or_else(|| NONE.to_owned(), |k| format!("\"{k}\"")),
                x.payload_bytes,
                x.payload
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::PartitionScan;
    use super::*;

    fn rec(offset: i64, reason: &str, src_offset: i64, at: &str) -> DlqRecord {
        DlqRecord {
            partition: 0,
            offset,
            reason: reason.into(),
            source_topic: Some("estate.events".into()),
            source_partition: Some(2),
            source_offset: Some(src_offset),
            ingested_at: Some(at.into()),
            key: Some(b"acme".to_vec()),
            value: format!("{{\"bad\":{offset}}}\n").into_bytes(),
        }
    }

    #[test]
    fn counts_distinct_rejects_and_keeps_samples() {
        let mut t = Tally::new(2, 8);
        t.add(&rec(0, "invalid_json", 10, "2026-01-01T00:00:02.000Z"));
        t.add(&rec(1, "invalid_json", 10, "2026-01-01T00:00:01.000Z")); // delivered twice
        t.add(&rec(2, "invalid_json", 11, "2026-01-01T00:00:03.000Z"));
        t.add(&rec(3, "too_large", 12, "2026-01-01T00:00:04.000Z"));
        let scan = ScanReport {
            partitions: vec![PartitionScan { partition: 0, low: 0, high: 4, start: 0, end: 4, reached: 4 }],
            read: 4,
            matched: 4,
            complete: true,
            last_error: None,
        };
        let i = t.finish("estate.dlq", scan);
        let j = &i.by_reason["invalid_json"];
        assert_eq!((j.records, j.distinct, j.samples.len()), (3, 2, 2));
        assert_eq!(j.first_ingested_at.as_deref(), Some("2026-01-01T00:00:01.000Z"));
        assert_eq!(j.last_ingested_at.as_deref(), Some("2026-01-01T00:00:03.000Z"));
        assert_eq!(j.samples[0].payload, "{\"bad\":0…(+2 bytes)");
        assert_eq!((i.by_source_topic["estate.events"].records, i.by_source_topic["estate.events"].distinct), (4, 3));
        let text = render_inspection(&i);
        assert!(text.contains("read 4 records (partition:[from,to) 0:[0,4)), 4 selected"), "{text}");
        assert!(text.contains("samples of invalid_json (2 of 3):"), "{text}");
        assert!(text.contains("dlq 0/3  from estate.events/2@12"), "{text}");
        let json = serde_json::to_value(&i).unwrap();
        assert_eq!(json["by_reason"]["too_large"]["distinct"], 1);
        assert_eq!(json["complete"], true);
        assert_eq!(json["partitions"][0]["high"], 4);
    }
}
