//! `estate dlq replay`: re-send selected DLQ records to where they came from.
//!
//! Each selected record is produced with its original key and bytes to its
//! source topic and partition (the `estate-source-*` headers), with the
//! headers `estate-replayed-from` (`<dlq topic>/<partition>/<offset>`) and
//! `estate-replay-reason`, by an idempotent, acks=all producer; every
//! acknowledgement is awaited. Keeping the partition keeps the dedup affinity
//! of the original message.
//!
//! Idempotence: ingest dedups events on `(tenant, event_id)` within its dedup
//! window, and a replayed message carries the `event_id` it was sent with (or
//! derives the same one from its content), so a second replay of a fixed
//! record stores nothing new. If the cause is not fixed, ingest rejects the
//! message again and it lands in the DLQ once more, once per replay; a later
//! replay sends each distinct (source topic, key, bytes) once per run, so
//! those re-rejects do not multiply.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::ops::ControlFlow;

use rdkafka::producer::FutureProducer;
use serde::Serialize;

use super::{
    DlqFilter, DlqRecord, DlqSource, Format, HEADER_REPLAY_REASON, HEADER_REPLAYED_FROM, ScanReport, escape_bytes, scan,
};
use crate::error::{Error, Result};
use crate::kafka::{self, OutRecord, publish_routed};

/// Records sent (and acknowledged) per round trip.
const BATCH: usize = 1_000;
/// Publishing rounds before replay gives up.
const PUBLISH_ROUNDS: u32 = 5;

/// Options of `estate dlq replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub source: DlqSource,

    // At least one `--reason` is required (checked in `replay`).
    #[command(flatten)]
    pub filter: DlqFilter,

    /// Send every selected record to this topic (partitioned by its key)
    /// instead of the topic and partition it was rejected from.
    #[arg(long, value_name = "TOPIC")]
    pub to_topic: Option<String>,

    /// List what would be sent, and send nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Characters of each payload that `--dry-run` shows.
    #[arg(long, env = "ESTATE_DLQ_MAX_PAYLOAD", default_value_t = 120)]
    pub max_payload: usize,

    /// Output format.
    #[arg(long, env = "ESTATE_FORMAT", value_enum, default_value = "table")]
    pub format: Format,
}

/// What a replay did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    /// The DLQ topic.
    pub topic: String,
    /// What was read.
    #[serde(flatten)]
    pub scan: ScanReport,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Records sent and acknowledged (would be sent, on a dry run).
    pub replayed: u64,
    /// Selected records not sent because an identical message (same source
    /// topic, key and bytes) was sent earlier in this run.
    pub skipped_copies: u64,
    /// Selected records without a source topic (and no `--to-topic`).
    pub unroutable: u64,
    /// Records sent, by target topic.
    pub by_target: BTreeMap<String, u64>,
    /// Records sent, by reason.
    pub by_reason: BTreeMap<String, u64>,
    /// On a dry run, each record that would be sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<Planned>,
}

/// One record a dry run would send.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// DLQ partition.
    pub dlq_partition: i32,
    /// DLQ offset.
    pub dlq_offset: i64,
    /// Reason it was rejected for.
    pub reason: String,
    /// Where it would go.
    pub target_topic: String,
    /// Partition it would go to (`None`: by key).
    pub target_partition: Option<i32>,
    /// The key, escaped.
    pub key: Option<String>,
    /// The payload, escaped and cut.
    pub payload: String,
}

struct Outgoing {
    rec: DlqRecord,
    topic: String,
    partition: Option<i32>,
}

/// Runs a replay. `Err` when nothing could be started (bad arguments, no
/// producer); otherwise the report and whether the run completed.
pub async fn replay(args: &ReplayArgs) -> Result<(ReplayReport, Result<()>)> {
    let dlq_topic = args.source.dlq_topic.clone();
    if args.filter.reasons.is_empty() {
        return Err(Error::Config(
            "dlq replay needs at least one --reason (`--reason '*'` selects every reason); see them with `estate dlq inspect`".into(),
        ));
    }
    if args.to_topic.as_deref() == Some(dlq_topic.as_str()) {
        return Err(Error::Config(format!("--to-topic {dlq_topic} is the DLQ itself")));
    }
    let producer = if args.dry_run { None } else { Some(kafka::producer(&args.source.brokers, &args.source.kafka_opts)?) };

    let (tx, mut rx) = tokio::sync::mpsc::channel::<DlqRecord>(BATCH * 2);
    let (src, filter) = (args.source.clone(), args.filter.clone());
    let reader = tokio::task::spawn_blocking(move || {
        scan(&src, &filter, |r| if tx.blocking_send(r).is_ok() { ControlFlow::Continue(()) } else { ControlFlow::Break(()) })
    });

    let mut report = ReplayReport {
        topic: dlq_topic.clone(),
        scan: ScanReport { partitions: Vec::new(), read: 0, matched: 0, complete: false, last_error: None },
        dry_run: args.dry_run,
        replayed: 0,
        skipped_copies: 0,
        unroutable: 0,
        by_target: BTreeMap::new(),
        by_reason: BTreeMap::new(),
        planned: Vec::new(),
    };
    let mut seen: HashSet<u128> = HashSet::new();
    let mut batch: Vec<Outgoing> = Vec::with_capacity(BATCH);
    let mut outcome: Result<()> = Ok(());
    while let Some(rec) = rx.recv().await {
        if !seen.insert(rec.content_id()) {
            report.skipped_copies += 1;
            continue;
        }
        let (topic, partition) = match (&args.to_topic, &rec.source_topic) {
            (Some(t), _) => (t.clone(), None),
            (None, Some(t)) if *t != dlq_topic => (t.clone(), rec.source_partition),
            _ => {
                report.unroutable += 1;
                continue;
            }
        };
        if args.dry_run {
            *report.by_target.entry(topic.clone()).or_default() += 1;
            *report.by_reason.entry(rec.reason.clone()).or_default() += 1;
            report.replayed += 1;
            report.planned.push(Planned {
                dlq_partition: rec.partition,
                dlq_offset: rec.offset,
                reason: rec.reason.clone(),
                target_topic: topic,
                target_partition: partition,
                key: rec.key.as_deref().map(|k| escape_bytes(k, 120)),
                payload: escape_bytes(&rec.value, args.max_payload),
            });
            continue;
        }
        batch.push(Outgoing { rec, topic, partition });
        if batch.len() >= BATCH
            && let Some(p) = &producer
            && let Err(e) = send(p, &dlq_topic, &mut batch, &mut report).await
        {
            outcome = Err(e);
            break;
        }
    }
    if outcome.is_ok()
        && let Some(p) = &producer
        && let Err(e) = send(p, &dlq_topic, &mut batch, &mut report).await
    {
        outcome = Err(e);
    }
    drop(rx);
    let scanned = reader.await.map_err(|e| Error::Config(format!("DLQ reader thread: {e}")))?;
    match scanned {
        Ok(s) => report.scan = s,
        Err(e) => outcome = outcome.and(Err(e)),
    }
    if outcome.is_ok() && !report.scan.complete {
        outcome = Err(report.scan.incomplete(&dlq_topic, args.source.timeout));
    }
    if outcome.is_ok() && report.unroutable > 0 {
        outcome = Err(Error::Config(format!(
            "{} selected records name no source topic (header estate-source-topic); give --to-topic to send them",
            report.unroutable
        )));
    }
    Ok((report, outcome))
}

/// Sends a batch and waits for every acknowledgement.
async fn send(producer: &FutureProducer, dlq_topic: &str, batch: &mut Vec<Outgoing>, report: &mut ReplayReport) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let recs: Vec<OutRecord<'_>> = batch
        .iter()
        .map(|o| OutRecord {
            key: o.rec.key.as_deref(),
            value: &o.rec.value,
            headers: vec![
                (HEADER_REPLAYED_FROM, format!("{dlq_topic}/{}/{}", o.rec.partition, o.rec.offset)),
                (HEADER_REPLAY_REASON, o.rec.reason.clone()),
            ],
        })
        .collect();
    publish_routed(producer, &recs, |i| (batch[i].topic.as_str(), batch[i].partition), PUBLISH_ROUNDS)
        .await
        .map_err(|e| Error::Dlq {
            topic: dlq_topic.to_owned(),
            detail: format!(
                "replay stopped: {e}; {} records were replayed before that. Re-running the same replay is safe \
                 within ingest's dedup window",
                report.replayed
            ),
        })?;
    for o in batch.drain(..) {
        report.replayed += 1;
        *report.by_target.entry(o.topic).or_default() += 1;
        *report.by_reason.entry(o.rec.reason).or_default() += 1;
    }
    Ok(())
}

/// The table form of a replay report.
pub fn render_replay(r: &ReplayReport) -> String {
    let mut s = String::new();
    let verb = if r.dry_run { "would replay" } else { "replayed" };
    for p in &r.planned {
        let part = p.target_partition.map_or_else(|| "by key".to_owned(), |x| x.to_string());
        let key = p.key.as_deref().map_or_else(|| "(none)".to_owned(), |k| format!("\"{k}\""));
        let _ = writeln!(
            s,
            "dlq {}/{}  {}  -> {}/{}  key {}\n    {}",
            p.dlq_partition, p.dlq_offset, p.reason, p.target_topic, part, key, p.payload
        );
    }
    let targets: Vec<String> = r.by_target.iter().map(|(t, n)| format!("{t}: {n}")).collect();
    let reasons: Vec<String> = r.by_reason.iter().map(|(t, n)| format!("{t}: {n}")).collect();
    let _ = writeln!(
        s,
        "{verb} {} of {} selected records from {} ({} read){}{}",
        r.replayed,
        r.scan.matched,
        r.topic,
        r.scan.read,
        if targets.is_empty() { String::new() } else { format!("; to {}", targets.join(", ")) },
        if reasons.is_empty() { String::new() } else { format!("; reasons {}", reasons.join(", ")) },
    );
    if r.skipped_copies > 0 {
        let _ = writeln!(s, "skipped {} copies of messages already sent in this run (same source topic, key and bytes)", r.skipped_copies);
    }
    if r.unroutable > 0 {
        let _ = writeln!(s, "NOT sent: {} records without a source topic (give --to-topic)", r.unroutable);
    }
    if !r.scan.complete {
        s.push_str("INCOMPLETE: the DLQ was not read to the end, see the error below\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_what_was_sent() {
        let r = ReplayReport {
            topic: "estate.dlq".into(),
            scan: ScanReport { partitions: Vec::new(), read: 10, matched: 4, complete: true, last_error: None },
            dry_run: true,
            replayed: 3,
            skipped_copies: 1,
            unroutable: 0,
            by_target: [("estate.events".to_owned(), 3)].into(),
            by_reason: [("time_out_of_range".to_owned(), 3)].into(),
            planned: vec![Planned {
                dlq_partition: 0,
                dlq_offset: 5,
                reason: "time_out_of_range".into(),
                target_topic: "estate.events".into(),
                target_partition: Some(1),
                key: Some("acme".into()),
                payload: "{}".into(),
            }],
        };
        let t = render_replay(&r);
        assert!(t.contains("dlq 0/5  time_out_of_range  -> estate.events/1  key \"acme\""), "{t}");
        assert!(t.contains("would replay 3 of 4 selected records from estate.dlq (10 read); to estate.events: 3"), "{t}");
        assert!(t.contains("skipped 1 copies"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["replayed"], 3);
        assert_eq!(j["planned"][0]["target_partition"], 1);
    }
}
