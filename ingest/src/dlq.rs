//! The dead-letter queue read back: `estate dlq inspect` and `estate dlq replay`.
//!
//! Ingest sends every rejected message to the DLQ topic with its original key
//! and bytes and the headers `estate-reason`, `estate-source-topic`,
//! `estate-source-partition`, `estate-source-offset` and `estate-ingested-at`.
//! This module reads that topic with an assign-based consumer: no consumer
//! group is joined and no offset is committed, so reading changes nothing on
//! the brokers. Each partition is read from its start (or `--from-offset`) up
//! to the high watermark captured when the command starts, so a run ends even
//! while ingest keeps rejecting, and the whole read is bounded by `--timeout`.
//!
//! Guarantees:
//! - **Inspect is read-only** and counts every record in the range, by
//!   reason and by source topic, both as records and as distinct source
//!   coordinates (DLQ delivery is at least once, so a reject may appear twice).
//! - **Replay is idempotent within ingest's dedup window.** A replayed record
//!   carries its original key and bytes, so its `event_id` (sent or derived)
//!   is the one ingest dedups on: replaying twice stores an event once. One
//!   run sends each distinct (source topic, key, bytes) once, so a record that
//!   was replayed before and rejected again is not sent twice by a later run.

mod inspect;
mod replay;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

pub use inspect::{InspectArgs, Inspection, SourceCount, ReasonCount, Sample, inspect, render_inspection};
pub use replay::{Planned, ReplayArgs, ReplayReport, render_replay, replay};

use crate::config::{parse_duration, parse_kv};
use crate::error::{Error, Result};
use crate::kafka;

/// Header: the reject reason code.
pub const HEADER_REASON: &str = "estate-reason";
/// Header: the topic the rejected message was read from.
pub const HEADER_SOURCE_TOPIC: &str = "estate-source-topic";
/// Header: its partition.
pub const HEADER_SOURCE_PARTITION: &str = "estate-source-partition";
/// Header: its offset.
pub const HEADER_SOURCE_OFFSET: &str = "estate-source-offset";
/// Header: when ingest rejected it (RFC 3339, UTC).
pub const HEADER_INGESTED_AT: &str = "estate-ingested-at";
/// Header on a replayed message: `<dlq topic>/<partition>/<offset>` it was replayed from.
pub const HEADER_REPLAYED_FROM: &str = "estate-replayed-from";
/// Header on a replayed message: the reason it had been rejected for.
pub const HEADER_REPLAY_REASON: &str = "estate-replay-reason";

/// `estate dlq`: inspect or replay the dead-letter topic.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// The `estate dlq` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DlqCommand {
    /// Count the DLQ records by reason and source topic and show samples of
    /// each reason (read-only; commits no offsets).
    Inspect(InspectArgs),
    /// Re-send selected DLQ records, with their original key and bytes, to
    /// the topic (and partition) they were rejected from. Idempotent within
    /// ingest's dedup window.
    Replay(ReplayArgs),
}

/// Output format of the operator tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for a terminal.
    Table,
    /// One JSON document.
    Json,
}

/// Where the DLQ is and how long reading it may take.
#[derive(Debug, Clone, clap::Args)]
pub struct DlqSource {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long, env = "ESTATE_BROKERS")]
    pub brokers: String,

    /// Dead-letter topic.
    #[arg(long, env = "ESTATE_DLQ_TOPIC", default_value = "estate.dlq")]
    pub dlq_topic: String,

    /// librdkafka setting passed through, e.g. `security.protocol=SASL_SSL` (repeatable).
    #[arg(long = "kafka-opt", env = "ESTATE_KAFKA_OPTS", value_parser = parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub kafka_opts: Vec<(String, String)>,

    /// Give up when the selected range has not been read within this time
    /// (the command then fails, saying how far it got).
    #[arg(long, env = "ESTATE_DLQ_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Which DLQ records a command looks at.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DlqFilter {
    /// Only records with this reason (repeatable). A trailing `*` matches a
    /// family (`missing_field:*`); `*` alone matches every reason.
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<String>,

    /// Only records rejected from this source topic (repeatable).
    #[arg(long = "source-topic", value_name = "TOPIC")]
    pub source_topics: Vec<String>,

    /// Only this partition of the DLQ topic (repeatable; default all).
    #[arg(long = "dlq-partition", value_name = "PARTITION")]
    pub partitions: Vec<i32>,

    /// First DLQ offset to read, inclusive, in every selected DLQ partition.
    #[arg(long, value_name = "OFFSET")]
    pub from_offset: Option<i64>,

    /// Last DLQ offset to read, inclusive, in every selected DLQ partition
    /// (default: the high watermark when the command starts, exclusive).
    #[arg(long, value_name = "OFFSET")]
    pub to_offset: Option<i64>,
}

impl DlqFilter {
    /// Whether a record passes the reason and source-topic filters.
    pub fn matches(&self, r: &DlqRecord) -> bool {
        (self.reasons.is_empty() || self.reasons.iter().any(|p| reason_matches(p, &r.reason)))
            && (self.source_topics.is_empty()
                || r.source_topic.as_ref().is_some_and(|t| self.source_topics.iter().any(|s| s == t)))
    }
}

/// `pattern` is a reason code, a prefix ending in `*`, or `*`.
pub fn reason_matches(pattern: &str, reason: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => reason.starts_with(prefix),
        None => pattern == reason,
    }
}

/// One record read from the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqRecord {
    /// DLQ partition.
    pub partition: i32,
    /// DLQ offset.
    pub offset: i64,
    /// Reason code (`(none)` when the header is missing).
    pub reason: String,
    /// Source topic.
    pub source_topic: Option<String>,
    /// Source partition.
    pub source_partition: Option<i32>,
    /// Source offset.
    pub source_offset: Option<i64>,
    /// When ingest rejected it.
    pub ingested_at: Option<String>,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub value: Vec<u8>,
}

impl DlqRecord {
    /// Identity of the rejected message: its source coordinates (the DLQ
    /// coordinates when those are missing). Copies of a reject share it.
    pub fn source_id(&self) -> u128 {
        match (&self.source_topic, self.source_partition, self.source_offset) {
            (Some(t), Some(p), Some(o)) => xxhash_rust::xxh3::xxh3_128(format!("{t}\x1f{p}\x1f{o}").as_bytes()),
            _ => xxhash_rust::xxh3::xxh3_128(format!("\x1fdlq\x1f{}\x1f{}", self.partition, self.offset).as_bytes()),
        }
    }

    /// Identity of the content: source topic, key and bytes. A message that
    /// was replayed and rejected again shares it with its first reject.
    pub fn content_id(&self) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [self.source_topic.as_deref().unwrap_or("").as_bytes(), self.key.as_deref().unwrap_or(b"\xff")] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(&self.value);
        h.digest128()
    }
}

/// How far one DLQ partition was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionScan {
    /// DLQ partition.
    pub partition: i32,
    /// Low watermark when the command started.
    pub low: i64,
    /// High watermark when the command started.
    pub high: i64,
    /// First offset of the selected range.
    pub start: i64,
    /// End of the selected range (exclusive).
    pub end: i64,
    /// Offset reached (`end` when complete).
    pub reached: i64,
}

/// What a scan read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    /// Per DLQ partition.
    pub partitions: Vec<PartitionScan>,
    /// Records read in the selected ranges.
    pub read: u64,
    /// Records that passed the filter.
    pub matched: u64,
    /// Whether every selected range was read to its end.
    pub complete: bool,
    /// The last consumer error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl ScanReport {
    /// The error for an incomplete scan, saying how far it got.
    pub fn incomplete(&self, topic: &str, timeout: Duration) -> Error {
        let left: Vec<String> = self
            .partitions
            .iter()
            .filter(|p| p.reached < p.end)
            .map(|p| format!("partition {} at offset {} of [{}, {})", p.partition, p.reached, p.start, p.end))
            .collect();
        Error::Dlq {
            topic: topic.to_owned(),
            detail: format!(
                "not read to the end within --timeout {} ({}){}; is the broker reachable? raise --timeout for a large DLQ",
                humantime::format_duration(timeout),
                left.join(", "),
                self.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
            ),
        }
    }
}

/// Reads the selected ranges of the DLQ and hands every record that passes
/// `filter` to `visit` (in offset order within a partition), until every
/// range is read, `visit` breaks, or `--timeout` passes. Blocking.
pub fn scan(src: &DlqSource, filter: &DlqFilter, mut visit: impl FnMut(DlqRecord) -> ControlFlow<()>) -> Result<ScanReport> {
    let topic = src.dlq_topic.as_str();
    let consumer: BaseConsumer = kafka::client_config(
        &src.brokers,
        &src.kafka_opts,
        &[
            ("group.id", "estate-dlq-reader"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("allow.auto.create.topics", "false"),
        ],
    )
    .create()
    .map_err(Error::kafka("creating the DLQ reader"))?;
    let deadline = Instant::now() + src.timeout;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    let md = consumer
        .fetch_metadata(Some(topic), left())
        .map_err(Error::kafka(format!("fetching metadata of DLQ topic {topic} from {}", src.brokers)))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Error::Config(format!("DLQ topic {topic} not found on {}", src.brokers)))?;
    if let Some(e) = t.error() {
        return Err(Error::Config(format!("DLQ topic {topic} on {}: {e:?} (does the topic exist?)", src.brokers)));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    for p in &filter.partitions {
        if !ids.contains(p) {
            return Err(Error::Config(format!("DLQ topic {topic} has no partition {p} (it has {})", ids.len())));
        }
    }
    let mut parts = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for p in ids.into_iter().filter(|p| filter.partitions.is_empty() || filter.partitions.contains(p)) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, left())
            .map_err(Error::kafka(format!("watermarks of {topic}/{p}")))?;
        let start = filter.from_offset.map_or(low, |o| o.max(low));
        let end = filter.to_offset.map_or(high, |o| o.saturating_add(1).min(high));
        if start < end {
            tpl.add_partition_offset(topic, p, Offset::Offset(start)).map_err(Error::kafka("DLQ assignment"))?;
        }
        parts.push(PartitionScan { partition: p, low, high, start, end, reached: start.min(end) });
    }
    let mut report = ScanReport { partitions: parts, read: 0, matched: 0, complete: false, last_error: None };
    let pending = |r: &ScanReport| r.partitions.iter().any(|p| p.reached < p.end);
    if !pending(&report) {
        report.complete = true;
        return Ok(report);
    }
    consumer.assign(&tpl).map_err(Error::kafka("assigning the DLQ partitions"))?;
    while pending(&report) && Instant::now() < deadline {
        let m = match consumer.poll(Duration::from_millis(200)) {
            None => {
                // Past control records or compacted offsets no message
                // arrives; the fetch position still moves.
                if let Ok(pos) = consumer.position() {
                    for e in pos.elements() {
                        if let (Offset::Offset(o), Some(p)) =
                            (e.offset(), report.partitions.iter_mut().find(|p| p.partition == e.partition()))
                        {
                            p.reached = p.reached.max(o.min(p.end));
                        }
                    }
                }
                continue;
            }
            Some(Err(e)) => {
                tracing::warn!(topic, error = %e, "reading the DLQ");
                report.last_error = Some(e.to_string());
                continue;
            }
            Some(Ok(m)) => m,
        };
        let Some(part) = report.partitions.iter_mut().find(|p| p.partition == m.partition()) else { continue };
        if m.offset() < part.reached || m.offset() >= part.end {
            continue;
        }
        part.reached = m.offset() + 1;
        report.read += 1;
        let rec = record_of(&m);
        if !filter.matches(&rec) {
            continue;
        }
        report.matched += 1;
        if visit(rec).is_break() {
            report.complete = !pending(&report);
            return Ok(report);
        }
    }
    report.complete = !pending(&report);
    Ok(report)
}

fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> DlqRecord {
    let header = |name: &str| -> Option<String> {
        m.headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    DlqRecord {
        partition: m.partition(),
        offset: m.offset(),
        reason: header(HEADER_REASON).unwrap_or_else(|| "(none)".to_owned()),
        source_topic: header(HEADER_SOURCE_TOPIC),
        source_partition: header(HEADER_SOURCE_PARTITION).and_then(|v| v.parse().ok()),
        source_offset: header(HEADER_SOURCE_OFFSET).and_then(|v| v.parse().ok()),
        ingested_at: header(HEADER_INGESTED_AT),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().unwrap_or_default().to_vec(),
    }
}

/// Renders bytes for a terminal: UTF-8 text with control characters and
/// backslashes escaped (`\n`, `\u{1b}`, `\\`), invalid bytes as `\xNN`, cut
/// after `max` characters with the number of bytes left out.
pub fn escape_bytes(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0usize;
    let mut consumed = 0usize;
    'outer: for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if shown >= max {
                break 'outer;
            }
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
            shown += 1;
            consumed += c.len_utf8();
        }
        for b in chunk.invalid() {
            if shown >= max {
                break 'outer;
            }
            out.push_str(&format!("\\x{b:02x}"));
            shown += 1;
            consumed += 1;
        }
    }
    if consumed < bytes.len() {
        out.push_str(&format!("…(+{} bytes)", bytes.len() - consumed));
    }
    out
}

/// Runs `estate dlq …`, printing to stdout.
pub async fn run(args: DlqArgs) -> Result<()> {
    match args.command {
        DlqCommand::Inspect(a) => {
            let (text, outcome) = tokio::task::spawn_blocking(move || {
                let i = inspect(&a)?;
                let text = match a.format {
                    Format::Table => render_inspection(&i),
                    Format::Json => serde_json::to_string_pretty(&i).expect("serialising a report") + "\n",
                };
                let outcome = if i.scan.complete { Ok(()) } else { Err(i.scan.incomplete(&a.source.dlq_topic, a.source.timeout)) };
                Ok::<_, Error>((text, outcome))
            })
            .await
            .map_err(|e| Error::Config(format!("DLQ reader thread: {e}")))??;
            print!("{text}");
            outcome
        }
        DlqCommand::Replay(a) => {
            let (report, outcome) = replay(&a).await?;
            match a.format {
                Format::Table => print!("{}", render_replay(&report)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report).expect("serialising a report")),
            }
            outcome
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(reason: &str, topic: Option<&str>) -> DlqRecord {
        DlqRecord {
            partition: 0,
            offset: 7,
            reason: reason.into(),
            source_topic: topic.map(Into::into),
            source_partition: Some(1),
            source_offset: Some(9),
            ingested_at: None,
            key: Some(b"acme".to_vec()),
            value: b"{}".to_vec(),
        }
    }

    #[test]
    fn reasons_match_exactly_by_family_or_all() {
        assert!(reason_matches("invalid_json", "invalid_json"));
        assert!(!reason_matches("invalid_json", "invalid_json_x"));
        assert!(reason_matches("missing_field:*", "missing_field:node"));
        assert!(!reason_matches("missing_field:*", "invalid_field:node"));
        assert!(reason_matches("*", "anything"));
        let f = DlqFilter { reasons: vec!["too_large".into(), "missing_field:*".into()], source_topics: vec!["estate.events".into()], ..Default::default() };
        assert!(f.matches(&rec("missing_field:seq", Some("estate.events"))));
        assert!(!f.matches(&rec("missing_field:seq", Some("estate.events.acme"))));
        assert!(!f.matches(&rec("missing_field:seq", None)));
        assert!(!f.matches(&rec("invalid_json", Some("estate.events"))));
        assert!(DlqFilter::default().matches(&rec("x", None)));
    }

    #[test]
    fn identities_tell_copies_from_other_messages() {
        let a = rec("time_out_of_range", Some("estate.events"));
        let mut again = a.clone();
        again.offset = 99;
        again.source_offset = Some(1234);
        assert_eq!(a.content_id(), again.content_id(), "a re-reject of a replay is the same content");
        assert_ne!(a.source_id(), again.source_id(), "but a different rejected message");
        let mut other_key = a.clone();
        other_key.key = Some(b"globex".to_vec());
        assert_ne!(a.content_id(), other_key.content_id());
        let mut no_key = a.clone();
        no_key.key = None;
        assert_ne!(a.content_id(), no_key.content_id());
        let mut other_topic = a.clone();
        other_topic.source_topic = Some("estate.events.acme".into());
        assert_ne!(a.content_id(), other_topic.content_id());
    }

    #[test]
    fn payloads_are_escaped_and_cut() {
        assert_eq!(escape_bytes(br#"{"a":"b"}"#, 100), r#"{"a":"b"}"#);
        assert_eq!(escape_bytes(b"a\nb\\c\x1b", 100), "a\\nb\\\\c\\u{1b}");
        assert_eq!(escape_bytes(b"ok\xff\xfe!", 100), "ok\\xff\\xfe!");
        assert_eq!(escape_bytes("héllo wörld".as_bytes(), 5), "héllo…(+7 bytes)");
        assert_eq!(escape_bytes(b"", 5), "");
    }
}
