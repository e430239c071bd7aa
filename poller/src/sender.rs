//! Forwarding the spool to Kafka: an idempotent, acks=all producer that
//! never times a message out, records removed from the spool only once
//! acknowledged, and a look at the topic after a restart so that records a
//! crashed incarnation already delivered are not sent twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::{Compression, Mode};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::spool::{Record, Spool};
use crate::state::{KafkaCoord, SpoolPos};

/// Header names on every produced record (the payload stays authoritative).
pub const HEADER_POLLER: &str = "estate-poller";
/// Epoch header.
pub const HEADER_EPOCH: &str = "estate-epoch";
/// Seq header.
pub const HEADER_SEQ: &str = "estate-seq";

/// Sender settings.
#[derive(Debug, Clone)]
pub(crate) struct SenderConfig {
    pub brokers: String,
    pub topic: String,
    pub tenant: String,
    pub poller: String,
    pub compression: Compression,
    pub mode: Mode,
    pub sync_interval: Duration,
    pub max_inflight: usize,
    pub kafka_opts: Vec<(String, String)>,
}

/// Flags shared with the agent.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// Stop sending (batch mode: at once; stream mode: once drained or at the deadline).
    pub stop: AtomicBool,
    /// Stream mode: stop only when the spool is empty (end of stdin).
    pub drain_fully: AtomicBool,
    /// Stream mode: the drain deadline after `stop`.
    pub deadline: Mutex<Option<Instant>>,
}

/// A delivery report: the send token and the landing (partition, offset).
type Ack = (usize, std::result::Result<(i32, i64), KafkaError>);

#[derive(Debug, Default)]
struct AckContext {
    acks: Mutex<Vec<Ack>>,
}

impl ClientContext for AckContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, token: usize) {
        let res = match r {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).push((token, res));
    }
}

struct Inflight {
    end: SpoolPos,
    epoch: i64,
    seq: i64,
    done: Option<(i32, i64)>,
}

fn client_config(cfg: &SenderConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    let (linger, batch) = match cfg.mode {
        Mode::Stream => ("5", "10000"),
        Mode::Batch => ("100", "100000"),
    };
    for (k, v) in [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("compression.type", cfg.compression.as_str()),
        // Never time a message out: an outage of any length is waited out,
        // in order, with no resend and so no duplicate.
        ("message.timeout.ms", "0"),
        ("linger.ms", linger),
        ("batch.num.messages", batch),
        ("queue.buffering.max.messages", "200000"),
    ] {
        c.set(k, v);
    }
    for (k, v) in &cfg.kafka_opts {
        c.set(k, v);
    }
    c
}

/// Runs the sender until `ctl.stop` says so; restarts its producer after
/// errors, resuming at the acknowledged position.
pub(crate) fn run(spool: &Spool, cfg: &SenderConfig, ctl: &Control, metrics: &Metrics) -> Result<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match session(spool, cfg, ctl, metrics) {
            Ok(()) => return Ok(()),
            Err(e @ Error::Config(_)) => return Err(e),
            Err(e) => {
                metrics.send_errors.inc();
                tracing::error!(error = %e, retry_in = ?backoff, "sending failed; restarting the producer from the last acknowledged record");
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if ctl.stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn session(spool: &Spool, cfg: &SenderConfig, ctl: &Control, metrics: &Metrics) -> Result<()> {
    let producer: BaseProducer<AckContext> =
        client_config(cfg).create_with_context(AckContext::default()).map_err(|e| match e {
            KafkaError::ClientCreation(m) => Error::Config(format!("kafka producer settings: {m}")),
            e @ KafkaError::ClientConfig(..) => Error::Config(format!("kafka producer settings (--kafka-opt): {e}")),
            e => Error::kafka("creating producer")(e),
        })?;
    skip_delivered(spool, cfg, metrics);
    let mut reader = spool.reader();
    let mut inflight: VecDeque<Inflight> = VecDeque::new();
    let mut base_token = 0usize;
    let mut batch: Vec<Record> = Vec::new();
    let mut next_sync = Instant::now() + cfg.sync_interval;
    let mut burst: Option<SpoolPos> = None;
    loop {
        let stopping = ctl.stop.load(Ordering::Relaxed);
        if stopping {
            let drained = inflight.is_empty() && spool.depth() == 0;
            let past = ctl.deadline.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|d| Instant::now() >= d);
            let full_drain = ctl.drain_fully.load(Ordering::Relaxed);
            if (cfg.mode == Mode::Batch && !full_drain) || drained || (past && !full_drain) {
                // Let acknowledgements in flight land; what is not
                // acknowledged stays in the spool for the next start.
                producer.poll(Duration::from_millis(100));
                handle_acks(&producer, &mut inflight, &mut base_token, spool, cfg, metrics)?;
                return Ok(());
            }
        }
        let limit = match cfg.mode {
            Mode::Stream => None,
            Mode::Batch if stopping => None,
            Mode::Batch => {
                if burst.is_none() && Instant::now() >= next_sync {
                    let end = spool.durable_end();
                    tracing::info!(depth = spool.depth(), "batch sync: shipping the spool");
                    burst = Some(end);
                }
                match burst {
                    Some(end) => Some(end),
                    None => Some(SpoolPos::default()),
                }
            }
        };
        let mut sent = 0;
        if inflight.len() < cfg.max_inflight {
            batch.clear();
            reader.read((cfg.max_inflight - inflight.len()).min(2000), limit, &mut batch)?;
            for rec in batch.drain(..) {
                let token = base_token + inflight.len();
                send_one(&producer, cfg, &rec, token)?;
                inflight.push_back(Inflight { end: rec.end, epoch: rec.epoch, seq: rec.seq, done: None });
                sent += 1;
            }
        }
        producer.poll(if inflight.is_empty() { Duration::ZERO } else { Duration::from_millis(if sent > 0 { 0 } else { 5 }) });
        handle_acks(&producer, &mut inflight, &mut base_token, spool, cfg, metrics)?;
        if let Some(end) = burst
            && inflight.is_empty()
            && reader.position() >= end
        {
            tracing::info!(depth = spool.depth(), "batch sync done");
            burst = None;
            next_sync += cfg.sync_interval;
            if next_sync < Instant::now() {
                next_sync = Instant::now() + cfg.sync_interval;
            }
        }
        if sent == 0 && inflight.is_empty() {
            spool.wait(Duration::from_millis(100));
        }
    }
}

fn send_one(producer: &BaseProducer<AckContext>, cfg: &SenderConfig, rec: &Record, token: usize) -> Result<()> {
    let epoch = rec.epoch.to_string();
    let seq = rec.seq.to_string();
    loop {
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header { key: HEADER_POLLER, value: Some(cfg.poller.as_bytes()) })
            .insert(Header { key: HEADER_EPOCH, value: Some(epoch.as_bytes()) })
            .insert(Header { key: HEADER_SEQ, value: Some(seq.as_bytes()) });
        let r = BaseRecord::with_opaque_to(&cfg.topic, token)
            .key(cfg.tenant.as_bytes())
            .payload(rec.payload.as_slice())
            .headers(headers);
        match producer.send(r) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(Error::kafka(format!("producing to {}", cfg.topic))(e)),
        }
    }
}

fn handle_acks(
    producer: &BaseProducer<AckContext>,
    inflight: &mut VecDeque<Inflight>,
    base_token: &mut usize,
    spool: &Spool,
    cfg: &SenderConfig,
    metrics: &Metrics,
) -> Result<()> {
    let acks = std::mem::take(&mut *producer.context().acks.lock().unwrap_or_else(|p| p.into_inner()));
    for (token, res) in acks {
        let Some(f) = token.checked_sub(*base_token).and_then(|i| inflight.get_mut(i)) else {
            continue;
        };
        match res {
            Ok(coord) => f.done = Some(coord),
            Err(e) => {
                return Err(Error::kafka(format!("delivery of seq {} (epoch {}) to {}", f.seq, f.epoch, cfg.topic))(e));
            }
        }
    }
    let mut n = 0u64;
    let mut last = None;
    while inflight.front().is_some_and(|f| f.done.is_some()) {
        let f = inflight.pop_front().expect("checked");
        *base_token += 1;
        n += 1;
        last = Some(f);
    }
    if let Some(f) = last {
        let (partition, offset) = f.done.expect("done");
        let coord = KafkaCoord { topic: cfg.topic.clone(), partition, offset };
        spool.ack(f.end, n, (f.epoch, f.seq), Some(coord));
        metrics.records_acked.inc_by(n);
    }
    Ok(())
}

/// After a restart, finds the records of the unacknowledged tail that a
/// previous incarnation delivered but did not record as acknowledged, by
/// reading the topic after the last acknowledged offset, and acknowledges
/// them without sending. Best effort: on any failure everything
/// unacknowledged is sent again (ingest drops the copies by event_id).
fn skip_delivered(spool: &Spool, cfg: &SenderConfig, metrics: &Metrics) {
    if spool.depth() == 0 {
        return;
    }
    let mut first = Vec::new();
    if spool.reader().read(1, None, &mut first).unwrap_or(0) == 0 {
        return;
    }
    let since_ms = first[0].append_ms - 10_000;
    let found = match scan_topic(cfg, spool, since_ms) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "could not check the topic for records delivered before the restart; re-sending the unacknowledged tail (ingest deduplicates)");
            return;
        }
    };
    if found.is_empty() {
        return;
    }
    let mut reader = spool.reader();
    let mut recs = Vec::new();
    let mut skipped = 0u64;
    let mut last = None;
    loop {
        recs.clear();
        if reader.read(1000, None, &mut recs).unwrap_or(0) == 0 {
            break;
        }
        let mut stop = false;
        for r in &recs {
            if found.get(&r.epoch).is_some_and(|&(max, _, _)| r.seq <= max) {
                skipped += 1;
                last = Some((r.end, r.epoch, r.seq));
            } else {
                stop = true;
                break;
            }
        }
        if stop {
            break;
        }
    }
    if let Some((end, epoch, seq)) = last {
        let (_, p, o) = found[&epoch];
        spool.ack(end, skipped, (epoch, seq), Some(KafkaCoord { topic: cfg.topic.clone(), partition: p, offset: o }));
        metrics.records_found_delivered.inc_by(skipped);
        tracing::info!(records = skipped, epoch, last_seq = seq, "records delivered before the restart were found in the topic; not sending them again");
    }
}

/// Max seq per epoch of this poller found in the topic, with its coordinates.
type Found = HashMap<i64, (i64, i32, i64)>;

fn scan_topic(cfg: &SenderConfig, spool: &Spool, since_ms: i64) -> Result<Found> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.kafka_opts {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc
        .set("group.id", format!("estate-poller-scan-{}", cfg.poller))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(Error::kafka("creating the recovery consumer"))?;
    let timeout = Duration::from_secs(10);
    let md = consumer.fetch_metadata(Some(&cfg.topic), timeout).map_err(Error::kafka("fetching metadata"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == cfg.topic) else { return Ok(Found::new()) };
    if t.error().is_some() || t.partitions().is_empty() {
        return Ok(Found::new());
    }
    let (_, _, kafka) = spool.acked();
    let starts: Vec<(i32, Offset)> = match kafka.filter(|k| k.topic == cfg.topic) {
        Some(k) => vec![(k.partition, Offset::Offset(k.offset + 1))],
        None => {
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition_offset(&cfg.topic, p.id(), Offset::Offset(since_ms.max(0)))
                    .map_err(Error::kafka("building partition list"))?;
            }
            match consumer.offsets_for_times(tpl, timeout) {
                Ok(res) => res.elements().iter().map(|e| (e.partition(), e.offset())).collect(),
                Err(_) => t.partitions().iter().map(|p| (p.id(), Offset::Beginning)).collect(),
            }
        }
    };
    let mut found = Found::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (p, start) in starts {
        let (low, high) = consumer.fetch_watermarks(&cfg.topic, p, timeout).map_err(Error::kafka("fetching watermarks"))?;
        let start = match start {
            Offset::Offset(o) => o.max(low),
            Offset::End => continue,
            _ => low,
        };
        if start >= high {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&cfg.topic, p, Offset::Offset(start)).map_err(Error::kafka("building partition list"))?;
        consumer.assign(&tpl).map_err(Error::kafka("assigning"))?;
        let mut pos = start;
        while pos < high {
            if Instant::now() > deadline {
                return Err(Error::Internal("scanning the topic took longer than 30 s".into()));
            }
            let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
            let m = m.map_err(Error::kafka("reading the topic"))?;
            pos = m.offset() + 1;
            let Some(h) = m.headers() else { continue };
            let get = |name: &str| h.iter().find(|x| x.key == name).and_then(|x| x.value);
            if get(HEADER_POLLER) != Some(cfg.poller.as_bytes()) {
                continue;
            }
            let num = |name: &str| get(name).and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
            if let (Some(e), Some(s)) = (num(HEADER_EPOCH), num(HEADER_SEQ)) {
                let entry = found.entry(e).or_insert((0, p, m.offset()));
                if s > entry.0 {
                    *entry = (s, p, m.offset());
                }
            }
        }
    }
    Ok(found)
}
