//! The pipeline of one ingest instance: the partitions it owns, the four
//! Delta sinks, and the flush that commits them.
//!
//! A flush runs, in order:
//! 1. publish pending DLQ records and wait for every acknowledgement;
//! 2. for each table, one fenced Delta commit carrying every partition's
//!    offset (`events`, `nodes`, `heartbeats`, then `receipts`);
//! 3. publish the newly stored events to the deduplicated stream;
//! 4. commit the Kafka offsets (a hint, and the deduplicated stream's
//!    watermark).
//!
//! Steps 1–3 run on a runtime worker while the consumer thread goes on
//! reading into fresh buffers: the flush *takes* what is pending (finished
//! batches, DLQ and deduplicated records, and per partition the offset it
//! covers), and its outcome is *settled* on the consumer thread (watermarks,
//! step 4, resets) as soon as it is done. At most one flush is in flight: the
//! next one, a rebalance and shutdown each settle it first, so the offsets a
//! flush claims always follow the ones the previous flush committed.
//!
//! Any partition whose flush cannot complete is *reset*: its pending state is
//! dropped and rebuilt from the tables, and the consumer is seeked back to
//! where the tables say it stands. Nothing is ever dropped: what was not
//! committed is read again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::RecordBatch;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::flush::{Claim, DlqJob, FlushDone, FlushJob, InFlight, TableJob};
use crate::metrics::{Metrics, label};
use crate::partition::{Counts, DedupedRecord, PartitionState, ProcessConfig, TopicPartition};
use crate::restore;
use crate::store::Store;
use crate::table::{DeltaSink, TableKind, TxnClaim, app_id};

/// A table with nothing new is still committed (to advance its watermark and
/// keep replay after a restart short) when it lags by this many offsets …
const IDLE_COMMIT_OFFSETS: i64 = 50_000;
/// … or this long.
const IDLE_COMMIT_INTERVAL: Duration = Duration::from_secs(10);

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct PipelineConfig {
    /// Per-message settings.
    pub process: ProcessConfig,
    /// Flush at least this often.
    pub flush_interval: Duration,
    /// Flush when this many rows are pending.
    pub flush_max_rows: usize,
    /// Commit the side tables (all but `events`) at most this often.
    pub side_table_interval: Duration,
    /// DLQ topic.
    pub dlq_topic: String,
    /// Deduplicated stream topic (`None`: off).
    pub deduped_topic: Option<String>,
    /// Names the Kafka cluster in the offsets recorded with each commit.
    pub source_id: Option<String>,
}

/// The pipeline.
pub(crate) struct Pipeline {
    cfg: PipelineConfig,
    rt: Handle,
    /// The tables; held by the flush in flight while it commits.
    sinks: Arc<tokio::sync::Mutex<Vec<DeltaSink>>>,
    parts: Vec<PartitionState>,
    /// The flush running on the runtime, if any.
    in_flight: Option<InFlight>,
    last_part: usize,
    producer: FutureProducer,
    metrics: Arc<Metrics>,
    last_flush: Instant,
    last_commit: [Instant; 4],
    /// When the side tables were last included in a flush.
    last_side: Instant,
    pending: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("partitions", &self.parts.len()).field("pending", &self.pending).finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Pipeline {
    /// Opens (or creates) the four tables.
    pub(crate) async fn open(
        cfg: PipelineConfig,
        store: &Store,
        producer: FutureProducer,
        metrics: Arc<Metrics>,
    ) -> Result<Pipeline> {
        let mut sinks = Vec::with_capacity(4);
        for kind in TableKind::ALL {
            sinks.push(DeltaSink::open(store, kind).await?);
        }
        Ok(Pipeline {
            cfg,
            rt: Handle::current(),
            sinks: Arc::new(tokio::sync::Mutex::new(sinks)),
            parts: Vec::new(),
            in_flight: None,
            last_part: 0,
            producer,
            metrics,
            last_flush: Instant::now(),
            last_commit: [Instant::now(); 4],
            last_side: Instant::now(),
            pending: 0,
        })
    }

    fn find(&mut self, topic: &str, partition: i32) -> Option<usize> {
        let hit = |p: &PartitionState| p.tp.partition == partition && &*p.tp.topic == topic;
        if self.parts.get(self.last_part).is_some_and(hit) {
            return Some(self.last_part);
        }
        let i = self.parts.iter().position(hit)?;
        self.last_part = i;
        Some(i)
    }

    /// Processes one message of an owned partition.
    pub(crate) fn process(&mut self, topic: &str, partition: i32, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        let Some(i) = self.find(topic, partition) else {
            tracing::error!(topic, partition, offset, "message for a partition this instance does not own; ignored (it will be read by its owner)");
            return;
        };
        let cfg = &self.cfg.process;
        self.parts[i].process(offset, key, payload, now_ms(), cfg);
        self.pending += 1;
    }

    /// True when a flush is due.
    pub(crate) fn flush_due(&self) -> bool {
        let side_pending =
            || self.side_due() && self.parts.iter().any(|p| TableKind::ALL.iter().any(|t| t.is_side() && p.has_rows(*t)));
        self.pending >= self.cfg.flush_max_rows
            || (self.last_flush.elapsed() >= self.cfg.flush_interval
                && (self.pending > 0
                    || side_pending()
                    || (self.last_commit.iter().any(|t| t.elapsed() >= IDLE_COMMIT_INTERVAL)
                        && self.parts.iter().any(|p| TableKind::ALL.iter().any(|t| p.behind(*t))))))
    }

    /// True when the side tables may be committed in this flush.
    fn side_due(&self) -> bool {
        self.last_side.elapsed() >= self.cfg.side_table_interval
    }

    /// Takes ownership of partitions: reads each one's watermarks and dedup
    /// window from the tables and returns the offsets to start from.
    pub(crate) fn assign<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        tps: &[(String, i32)],
    ) -> Result<Vec<(String, i32, Offset)>> {
        self.settle(consumer);
        let committed = kafka_committed(consumer, tps);
        let mut out = Vec::with_capacity(tps.len());
        for (topic, partition) in tps {
            let k = committed.iter().find(|(t, p, _)| t == topic && p == partition).and_then(|x| x.2);
            let state = self.rt.clone().block_on(self.init_partition(topic, *partition, k))?;
            let start = state.marks.resume_at();
            tracing::info!(topic, partition, resume_at = start, committed = ?state.marks.committed,
                dedup_keys = state.dedup.len(), "partition assigned");
            out.push((topic.clone(), *partition, if start <= 0 { Offset::Beginning } else { Offset::Offset(start) }));
            self.parts.retain(|p| !(p.tp.partition == *partition && &*p.tp.topic == topic.as_str()));
            self.parts.push(state);
        }
        self.metrics.partitions_assigned.set(self.parts.len() as i64);
        self.publish_gauges();
        Ok(out)
    }

    async fn init_partition(&mut self, topic: &str, partition: i32, kafka: Option<i64>) -> Result<PartitionState> {
        let kafka = if self.cfg.deduped_topic.is_some() { kafka } else { None };
        let sinks = self.sinks.clone();
        let mut sinks = sinks.lock().await;
        let marks = restore::watermarks(&mut sinks, self.cfg.source_id.as_deref(), topic, partition, kafka).await?;
        let p = &self.cfg.process;
        // Rows stored from this partition are revisited only if its events
        // watermark exists: without one, rows carrying these coordinates came
        // from another cluster (`--source-id`) and only the window applies.
        let replay_from = if marks.committed[TableKind::Events.idx()] < 0 { i64::MAX } else { marks.resume_at() };
        let dedup = restore::dedup_window(
            &sinks[TableKind::Events.idx()],
            topic,
            partition,
            replay_from,
            now_ms(),
            p.dedup_window_ms,
            p.dedup_max_keys,
        )
        .await?;
        let tp = TopicPartition { topic: Arc::from(topic), partition };
        Ok(PartitionState::new(tp, marks, dedup))
    }

    /// Gives up partitions after flushing what is held for them.
    pub(crate) fn revoke<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, tps: &[(String, i32)]) {
        self.flush(consumer, true);
        self.parts.retain(|p| !tps.iter().any(|(t, n)| *n == p.tp.partition && t.as_str() == &*p.tp.topic));
        self.last_part = 0;
        self.metrics.partitions_assigned.set(self.parts.len() as i64);
        tracing::info!(revoked = tps.len(), remaining = self.parts.len(), "partitions revoked");
    }

    /// Flushes what is pending: `events` always, the side tables when their
    /// interval has passed or `all` is set (shutdown, revocation). Waits for
    /// the flush in flight first; with `all`, also for this one. Never loses
    /// data: partitions that cannot be committed are reset and re-read.
    pub(crate) fn flush<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, all: bool) {
        self.settle(consumer);
        self.start_flush(all);
        if all {
            self.settle(consumer);
        }
    }

    /// Settles the flush in flight if it has finished; never waits.
    pub(crate) fn poll_flush<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.in_flight.as_ref().is_some_and(|f| f.handle.is_finished()) {
            self.settle(consumer);
        }
    }

    /// Takes what is pending into a flush job and starts it on the runtime.
    fn start_flush(&mut self, all: bool) {
        let started = Instant::now();
        let mut reset: Vec<usize> = Vec::new();
        let dlq: Vec<DlqJob> = self
            .parts
            .iter_mut()
            .enumerate()
            .filter(|(_, p)| !p.dlq.is_empty())
            .map(|(i, p)| DlqJob { part: i, tp: p.tp.clone(), records: std::mem::take(&mut p.dlq) })
            .collect();
        // The side tables are held back between their intervals;
        // `heartbeats` and `receipts` always go in the same flush, so both
        // stand at the same offsets.
        let side = all || self.side_due();
        if side {
            self.last_side = Instant::now();
        }
        let mut tables = Vec::new();
        for kind in TableKind::ALL {
            if kind.is_side() && !side {
                continue;
            }
            match self.take_table(kind) {
                Ok(Some(t)) => tables.push(t),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(table = kind.name(), error = %e, "building the flush failed; the partitions in it will be re-read from the tables");
                    reset.extend((0..self.parts.len()).filter(|&i| self.parts[i].behind(kind)));
                }
            }
        }
        // The deduplicated stream is published beside the table commits. It
        // is at least once: a partition whose commit fails is re-read and
        // re-published.
        let deduped: Vec<(usize, Vec<DedupedRecord>)> = match &self.cfg.deduped_topic {
            Some(_) => self
                .parts
                .iter_mut()
                .enumerate()
                .filter(|(_, p)| !p.deduped.is_empty())
                .map(|(i, p)| (i, std::mem::take(&mut p.deduped)))
                .collect(),
            None => Vec::new(),
        };
        let targets: Vec<i64> = self.parts.iter().map(|p| p.processed).collect();
        let counts = self.take_counts();
        self.pending = 0;
        self.last_flush = Instant::now();
        if dlq.is_empty() && tables.is_empty() && deduped.is_empty() && reset.is_empty() {
            // Nothing can fail: what was read is settled as it stands.
            for (i, c) in counts.into_iter().enumerate() {
                self.publish_counts(i, c);
            }
            self.publish_gauges();
            return;
        }
        let job = FlushJob {
            sinks: self.sinks.clone(),
            producer: self.producer.clone(),
            metrics: self.metrics.clone(),
            dlq_topic: self.cfg.dlq_topic.clone(),
            deduped_topic: self.cfg.deduped_topic.clone(),
            names: deduped.iter().map(|(i, _)| self.parts[*i].tp.to_string()).collect(),
            parts: self.parts.len(),
            dlq,
            tables,
            deduped,
            reset,
        };
        let handle = self.rt.spawn(job.run());
        self.in_flight = Some(InFlight { handle, started, targets, counts });
    }

    /// One table's part of a flush: every partition behind on it, with its
    /// finished batch and its claim; `None` when there is nothing worth
    /// committing.
    fn take_table(&mut self, kind: TableKind) -> Result<Option<TableJob>> {
        let t = kind.idx();
        let included: Vec<usize> = (0..self.parts.len()).filter(|&i| self.parts[i].behind(kind)).collect();
        if included.is_empty() {
            return Ok(None);
        }
        let lag = included
            .iter()
            .map(|&i| self.parts[i].processed - self.parts[i].marks.committed[t])
            .max()
            .unwrap_or(0);
        let has_rows = included.iter().any(|&i| self.parts[i].has_rows(kind));
        if !has_rows && lag < IDLE_COMMIT_OFFSETS && self.last_commit[t].elapsed() < IDLE_COMMIT_INTERVAL {
            return Ok(None);
        }
        let now = now_ms();
        let mut batches: Vec<(usize, RecordBatch)> = Vec::new();
        for &i in &included {
            let p = &mut self.parts[i];
            let b = match kind {
                TableKind::Events if !p.events.is_empty() => Some(p.events.finish()?),
                TableKind::Nodes if !p.nodes.is_empty() => Some(p.nodes.finish()?),
                TableKind::Heartbeats if !p.heartbeats.is_empty() => Some(p.heartbeats.finish()?),
                TableKind::Receipts if !p.receipts.is_empty() => {
                    let mut rb = estate_schemas::ReceiptsBuilder::default();
                    p.receipts.drain_into(&mut rb);
                    Some(rb.finish(now)?)
                }
                _ => None,
            };
            if let Some(b) = b {
                batches.push((i, b));
            }
        }
        let claims = included
            .iter()
            .map(|&i| {
                let p = &self.parts[i];
                let c = p.marks.committed[t];
                Claim {
                    part: i,
                    tp: p.tp.clone(),
                    txn: TxnClaim {
                        app_id: app_id(self.cfg.source_id.as_deref(), &p.tp.topic, p.tp.partition),
                        expected: (c >= 0).then_some(c),
                        target: p.processed,
                    },
                }
            })
            .collect();
        Ok(Some(TableJob { kind, claims, batches }))
    }

    /// Waits for the flush in flight, if any, and applies its outcome: the
    /// tables' watermarks, the Kafka offsets, and the resets.
    fn settle<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let Some(f) = self.in_flight.take() else { return };
        let done = match self.rt.block_on(f.handle) {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                tracing::error!(error = %e, "flush task did not finish; every partition will be re-read from the tables");
                FlushDone { committed: Vec::new(), reset: (0..self.parts.len()).collect(), tables_took: f.started.elapsed() }
            }
        };
        debug_assert_eq!(f.targets.len(), self.parts.len(), "partitions change only after a flush is settled");
        let mut committed_any = false;
        for (kind, i, target) in &done.committed {
            committed_any = true;
            self.parts[*i].marks.committed[kind.idx()] = *target;
            self.last_commit[kind.idx()] = Instant::now();
        }
        let mut reset = done.reset;
        reset.sort_unstable();
        reset.dedup();
        // Kafka offsets: a hint for other tools, and the deduplicated stream's watermark.
        let mut tpl = TopicPartitionList::new();
        for (i, p) in self.parts.iter_mut().enumerate() {
            let target = f.targets.get(i).copied().unwrap_or(-1);
            if reset.contains(&i) || target < 0 {
                continue;
            }
            p.marks.deduped = target;
            let _ = tpl.add_partition_offset(&p.tp.topic, p.tp.partition, Offset::Offset(target + 1));
        }
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "committing Kafka offsets failed (they are only a hint; the tables are authoritative)");
        }
        for (i, c) in f.counts.into_iter().enumerate() {
            if !reset.contains(&i) && i < self.parts.len() {
                self.publish_counts(i, c);
            }
        }
        for i in reset.iter().rev() {
            let Some(tp) = self.parts.get(*i).map(|p| p.tp.clone()) else { continue };
            self.metrics.flush_failures.inc();
            if let Err(e) = self.reset_partition(consumer, &tp) {
                tracing::error!(partition = %tp, error = %e, "resetting partition failed; dropping it from this instance until the next rebalance");
                self.parts.retain(|p| p.tp != tp);
            }
        }
        let took = f.started.elapsed();
        tracing::debug!(committed_any, reset = reset.len(), tables = ?done.tables_took, total = ?took, "flush: tables and deduped stream done");
        if committed_any {
            self.metrics.flushes.inc();
            self.metrics.flush_seconds.observe(took.as_secs_f64());
            if took > Duration::from_secs(5) {
                tracing::warn!(took = ?took, tables = ?done.tables_took, "slow flush");
            } else {
                tracing::debug!(took = ?took, "flushed");
            }
        }
        self.publish_gauges();
    }

    fn reset_partition<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, tp: &TopicPartition) -> Result<()> {
        let committed = kafka_committed(consumer, &[(tp.topic.to_string(), tp.partition)]);
        let k = committed.first().and_then(|x| x.2);
        let state = self.rt.clone().block_on(self.init_partition(&tp.topic, tp.partition, k))?;
        let start = state.marks.resume_at();
        let offset = if start <= 0 { Offset::Beginning } else { Offset::Offset(start) };
        tracing::warn!(partition = %tp, resume_at = start, "partition reset: re-reading from the tables' watermarks");
        if let Some(i) = self.parts.iter().position(|p| p.tp == *tp) {
            self.parts[i] = state;
        }
        consumer
            .seek(&tp.topic, tp.partition, offset, Duration::from_secs(10))
            .map_err(Error::kafka(format!("seeking {tp}")))
    }

    /// Takes each partition's counters of what was read since the last
    /// flush (indexed like the partitions), and expires dedup keys past the
    /// window.
    fn take_counts(&mut self) -> Vec<Counts> {
        let now = now_ms();
        self.parts
            .iter_mut()
            .map(|p| {
                // While replaying offsets `events` already holds, keep the keys replay will still visit.
                let replaying = p.processed < p.marks.committed[TableKind::Events.idx()];
                p.dedup.expire(now, if replaying { p.processed } else { i64::MAX });
                std::mem::take(&mut p.counts)
            })
            .collect()
    }

    /// Publishes partition `i`'s counters once its flush has settled. The
    /// counters of a partition that is reset are dropped instead: it re-reads
    /// and re-counts those offsets.
    fn publish_counts(&self, i: usize, c: Counts) {
        if c.skipped_offsets > 0 {
            // The seq-based loss audit shows what this cost, per poller.
            tracing::warn!(partition = %self.parts[i].tp, offsets = c.skipped_offsets,
                "offsets skipped: the broker no longer had them when they were due (its retention deleted them \
                 before ingest read them), or they were transaction markers");
            self.metrics.offsets_skipped.inc_by(c.skipped_offsets);
        }
        self.metrics.messages_in.inc_by(c.messages);
        self.metrics.duplicates.inc_by(c.duplicates);
        for (reason, n) in c.rejected {
            self.metrics.rejected.get_or_create(&label("reason", reason.code())).inc_by(n);
        }
    }

    /// Per assigned partition: (topic, partition, next offset to process).
    pub(crate) fn positions(&self) -> Vec<(String, i32, i64)> {
        self.parts.iter().map(|p| (p.tp.topic.to_string(), p.tp.partition, p.processed + 1)).collect()
    }

    fn publish_gauges(&self) {
        let keys: usize = self.parts.iter().map(|p| p.dedup.len()).sum();
        self.metrics.dedup_keys.set(keys as i64);
        let ev: u64 = self.parts.iter().map(|p| p.dedup.evictions()).sum();
        let seen = self.metrics.dedup_evictions.get();
        if ev > seen {
            self.metrics.dedup_evictions.inc_by(ev - seen);
        }
    }
}

/// The group's committed offsets of some partitions (`None` where unknown).
fn kafka_committed<C: ConsumerContext>(consumer: &BaseConsumer<C>, tps: &[(String, i32)]) -> Vec<(String, i32, Option<i64>)> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in tps {
        tpl.add_partition(t, *p);
    }
    match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(list) => list
            .elements()
            .iter()
            .map(|e| {
                let off = match e.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                };
                (e.topic().to_owned(), e.partition(), off)
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading committed offsets failed; resuming from the tables alone");
            tps.iter().map(|(t, p)| (t.clone(), *p, None)).collect()
        }
    }
}
