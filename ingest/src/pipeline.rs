//! The pipeline of one ingest instance: the partitions it owns, the four
//! Delta sinks, and the flush that commits them.
//!
//! A flush freezes what is pending in every partition (one [`FlushJob`]) and
//! hands it to a commit thread, while the consumer thread goes on reading
//! into fresh buffers. (A thread of its own, not a runtime worker: Parquet
//! encoding is CPU work that must not stall the query service's tasks when
//! both share a runtime, as in `estate standalone`.) The job runs, in order:
//! 1. publish pending DLQ records and wait for every acknowledgement;
//! 2. for each table, one fenced Delta commit carrying every partition's
//!    offset (`events`, `nodes`, `heartbeats`, then `receipts`), while the
//!    newly stored events are published to the deduplicated stream.
//!
//! At most one job is in flight. When it has finished, the consumer thread
//! *settles* it: it advances the partitions' watermarks to the offsets the
//! job committed, commits the Kafka offsets (a hint, and the deduplicated
//! stream's watermark) and publishes the counters. Only then can the next
//! job start, so each job's fenced claims expect exactly what the previous
//! one committed. Assigning and revoking partitions, and shutting down,
//! settle the job in flight first.
//!
//! Any partition whose job could not complete is *reset*: its state
//! (including what was read after the job started) is dropped and rebuilt
//! from the tables, and the consumer is seeked back to where the tables say
//! it stands. Nothing is ever dropped: what was not committed is read again.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use deltalake::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use deltalake::arrow::compute::{concat_batches, take_record_batch};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::row::{RowConverter, SortField};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::error::{Error, Result};
use crate::kafka::{OutRecord, publish_all};
use crate::metrics::{Metrics, label};
use crate::partition::{Counts, DedupedRecord, DlqRecord, PartitionState, ProcessConfig, TopicPartition};
use crate::restore;
use crate::store::Store;
use crate::table::{CommitOutcome, DeltaSink, TableKind, TxnClaim, app_id};

/// A table with nothing new is still committed (to advance its watermark and
/// keep replay after a restart short) when it lags by this many offsets …
const IDLE_COMMIT_OFFSETS: i64 = 50_000;
/// … or this long.
const IDLE_COMMIT_INTERVAL: Duration = Duration::from_secs(10);
/// Publishing rounds before a partition is reset and replayed.
const PUBLISH_ROUNDS: u32 = 8;

/// Settings of the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct PipelineConfig {
    /// Per-message settings.
    pub process: ProcessConfig,
    /// Flush at least this often.
    pub flush_interval: Duration,
    /// Flush when this many rows are pending.
    pub flush_max_rows: usize,
    /// DLQ topic.
    pub dlq_topic: String,
    /// Deduplicated stream topic (`None`: off).
    pub deduped_topic: Option<String>,
    /// Names the Kafka cluster in the offsets recorded with each commit.
    pub source_id: Option<String>,
}

/// One partition's share of a flush, frozen when the flush started.
struct JobPart {
    tp: TopicPartition,
    /// The offset each table held when the job started (its fenced claim's
    /// expectation).
    expected: [i64; 4],
    /// The last offset read when the job started: what every committed
    /// table holds afterwards.
    target: i64,
    /// New rows per table.
    batches: [Option<RecordBatch>; 4],
    dlq: Vec<DlqRecord>,
    deduped: Vec<DedupedRecord>,
    counts: Counts,
    /// Which tables the job committed up to `target`.
    committed: [bool; 4],
    /// The job could not complete for this partition: re-read it.
    reset: bool,
}

impl JobPart {
    fn behind(&self, t: TableKind) -> bool {
        !self.reset && self.target > self.expected[t.idx()]
    }
}

/// A flush on its way to the tables.
struct FlushJob {
    parts: Vec<JobPart>,
    /// When each table was last committed (for idle commits); updated by
    /// the job.
    last_commit: [Instant; 4],
    started: Instant,
    /// How long the table commits took.
    tables_took: Duration,
    committed_any: bool,
}

/// What a commit task needs besides its job; handed back when it ends.
struct Committer {
    cfg: Arc<PipelineConfig>,
    sinks: Vec<DeltaSink>,
    producer: FutureProducer,
    metrics: Arc<Metrics>,
}

/// The thread that runs flush jobs, one at a time, in order.
struct CommitThread {
    jobs: mpsc::Sender<(Committer, FlushJob)>,
    done: mpsc::Receiver<(Committer, FlushJob)>,
}

impl CommitThread {
    /// Starts the thread; it ends when the pipeline (the jobs' sender) goes.
    fn start(rt: Handle) -> Result<CommitThread> {
        let (jobs, todo) = mpsc::channel::<(Committer, FlushJob)>();
        let (finished, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("estate-ingest-commit".into())
            .spawn(move || {
                for (c, job) in todo {
                    if finished.send(rt.block_on(run_job(c, job))).is_err() {
                        break;
                    }
                }
            })
            .map_err(|source| Error::Io { what: "starting the commit thread".into(), source })?;
        Ok(CommitThread { jobs, done })
    }
}

/// The pipeline.
pub(crate) struct Pipeline {
    cfg: Arc<PipelineConfig>,
    rt: Handle,
    store: Store,
    producer: FutureProducer,
    /// The sinks, here when no job is in flight.
    committer: Option<Committer>,
    /// Runs the jobs (`None` if it could not be restarted after a panic:
    /// jobs then run on the consumer thread).
    commit_thread: Option<CommitThread>,
    /// A job was handed to the commit thread and not yet settled.
    inflight: bool,
    parts: Vec<PartitionState>,
    last_part: usize,
    metrics: Arc<Metrics>,
    last_flush: Instant,
    last_commit: [Instant; 4],
    pending: usize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("partitions", &self.parts.len())
            .field("pending", &self.pending)
            .field("job_in_flight", &self.inflight)
            .finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn open_sinks(store: &Store) -> Result<Vec<DeltaSink>> {
    let mut sinks = Vec::with_capacity(4);
    for kind in TableKind::ALL {
        sinks.push(DeltaSink::open(store, kind).await?);
    }
    Ok(sinks)
}

impl Pipeline {
    /// Opens (or creates) the four tables.
    pub(crate) async fn open(
        cfg: PipelineConfig,
        store: &Store,
        producer: FutureProducer,
        metrics: Arc<Metrics>,
    ) -> Result<Pipeline> {
        let sinks = open_sinks(store).await?;
        let cfg = Arc::new(cfg);
        Ok(Pipeline {
            committer: Some(Committer { cfg: cfg.clone(), sinks, producer: producer.clone(), metrics: metrics.clone() }),
            producer,
            cfg,
            rt: Handle::current(),
            store: store.clone(),
            commit_thread: Some(CommitThread::start(Handle::current())?),
            inflight: false,
            parts: Vec::new(),
            last_part: 0,
            metrics,
            last_flush: Instant::now(),
            last_commit: [Instant::now(); 4],
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

    /// Settles a finished job, then starts a flush if one is due. Cheap when
    /// there is nothing to do: call it after every message and poll.
    pub(crate) fn tick<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        if self.inflight {
            self.settle_with(consumer, false);
        }
        if self.flush_due() {
            self.flush(consumer);
        }
    }

    /// True when a flush is due. While a job is in flight, only a full
    /// buffer is (and flushing then waits for the job: backpressure).
    fn flush_due(&self) -> bool {
        if self.pending >= self.cfg.flush_max_rows {
            return true;
        }
        !self.inflight
            && self.last_flush.elapsed() >= self.cfg.flush_interval
            && (self.pending > 0
                || (self.last_commit.iter().any(|t| t.elapsed() >= IDLE_COMMIT_INTERVAL)
                    && self.parts.iter().any(|p| TableKind::ALL.iter().any(|t| p.behind(*t)))))
    }

    /// The sinks, which are here only when no job is in flight (callers
    /// settle first).
    fn sinks(&mut self) -> Result<&mut Vec<DeltaSink>> {
        match &mut self.committer {
            Some(c) => Ok(&mut c.sinks),
            None => Err(Error::Internal("the Delta sinks are held by a flush in flight".into())),
        }
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
        let cfg = self.cfg.clone();
        let kafka = if cfg.deduped_topic.is_some() { kafka } else { None };
        let sinks = self.sinks()?;
        let marks = restore::watermarks(sinks, cfg.source_id.as_deref(), topic, partition, kafka).await?;
        let p = &cfg.process;
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
        self.flush_and_settle(consumer);
        self.parts.retain(|p| !tps.iter().any(|(t, n)| *n == p.tp.partition && t.as_str() == &*p.tp.topic));
        self.last_part = 0;
        self.metrics.partitions_assigned.set(self.parts.len() as i64);
        tracing::info!(revoked = tps.len(), remaining = self.parts.len(), "partitions revoked");
    }

    /// Flushes everything pending and waits until it is committed (or its
    /// partitions reset). For revocation and shutdown.
    pub(crate) fn flush_and_settle<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.flush(consumer);
        self.settle(consumer);
    }

    /// Starts a flush of everything pending, after settling the job in
    /// flight (waiting for it if need be). Never loses data: partitions that
    /// cannot be committed are reset and re-read.
    fn flush<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.settle(consumer);
        self.pending = 0;
        self.last_flush = Instant::now();
        let now = now_ms();
        let mut parts = Vec::with_capacity(self.parts.len());
        for p in &mut self.parts {
            let mut jp = JobPart {
                tp: p.tp.clone(),
                expected: p.marks.committed,
                target: p.processed,
                batches: [None, None, None, None],
                dlq: std::mem::take(&mut p.dlq),
                deduped: std::mem::take(&mut p.deduped),
                counts: std::mem::take(&mut p.counts),
                committed: [false; 4],
                reset: false,
            };
            if let Err(e) = freeze(p, &mut jp.batches, now) {
                tracing::error!(partition = %p.tp, error = %e, "building the flush's batches failed; the partition will be re-read");
                jp.reset = true;
            }
            parts.push(jp);
        }
        let work = parts.iter().any(|jp| jp.reset || !jp.dlq.is_empty() || !jp.deduped.is_empty()
            || TableKind::ALL.iter().any(|t| jp.behind(*t)));
        if !work {
            // Nothing to commit: only the counters.
            for jp in parts {
                self.publish_counts(jp.counts);
            }
            self.publish_gauges();
            return;
        }
        let Some(committer) = self.committer.take() else {
            // Settled above, so the sinks are here; if not, re-read rather than drop.
            tracing::error!("no Delta sinks to flush with; the partitions will be re-read");
            let tps: Vec<TopicPartition> = parts.into_iter().map(|jp| jp.tp).collect();
            self.reset_all(consumer, &tps);
            return;
        };
        let job = FlushJob {
            parts,
            last_commit: self.last_commit,
            started: Instant::now(),
            tables_took: Duration::ZERO,
            committed_any: false,
        };
        let inline = match &self.commit_thread {
            Some(t) => match t.jobs.send((committer, job)) {
                Ok(()) => {
                    self.inflight = true;
                    return;
                }
                Err(mpsc::SendError(back)) => back,
            },
            None => (committer, job),
        };
        // No commit thread: commit here, as a flush did before pipelining.
        self.commit_thread = None;
        let (committer, job) = self.rt.block_on(run_job(inline.0, inline.1));
        self.apply(consumer, committer, job);
    }

    /// Waits for the job in flight, if any, and applies its outcome.
    fn settle<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        self.settle_with(consumer, true);
    }

    /// Applies the outcome of the job in flight if it has finished, or
    /// (with `wait`) once it has.
    fn settle_with<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, wait: bool) {
        let Some(t) = self.commit_thread.as_ref().filter(|_| self.inflight) else {
            return;
        };
        let got = if wait {
            t.done.recv().ok()
        } else {
            match t.done.try_recv() {
                Ok(done) => Some(done),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => None,
            }
        };
        self.inflight = false;
        match got {
            Some((committer, job)) => self.apply(consumer, committer, job),
            None => {
                // The thread died with the sinks (a panic: a bug). Start a
                // new one, reopen the tables, and re-read every partition
                // from what the tables hold.
                tracing::error!("the commit thread died; every partition will be re-read from the tables");
                self.commit_thread = CommitThread::start(self.rt.clone())
                    .inspect_err(|e| tracing::error!(error = %e, "restarting the commit thread failed; committing on the consumer thread"))
                    .ok();
                self.reopen_sinks();
                let all: Vec<TopicPartition> = self.parts.iter().map(|p| p.tp.clone()).collect();
                self.reset_all(consumer, &all);
            }
        }
    }

    /// Applies a finished job: the committed watermarks, the Kafka offsets,
    /// the counters, and the resets.
    fn apply<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, committer: Committer, job: FlushJob) {
        self.committer = Some(committer);
        self.last_commit = job.last_commit;
        let mut reset: Vec<TopicPartition> = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for jp in job.parts {
            let Some(i) = self.find(&jp.tp.topic, jp.tp.partition) else {
                continue;
            };
            if jp.reset {
                reset.push(jp.tp);
                continue;
            }
            let p = &mut self.parts[i];
            for t in TableKind::ALL {
                if jp.committed[t.idx()] {
                    p.marks.committed[t.idx()] = jp.target;
                }
            }
            if jp.target >= 0 {
                p.marks.deduped = jp.target;
                let _ = tpl.add_partition_offset(&jp.tp.topic, jp.tp.partition, Offset::Offset(jp.target + 1));
            }
            self.publish_counts(jp.counts);
        }
        // Kafka offsets: a hint for other tools, and the deduplicated stream's watermark.
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "committing Kafka offsets failed (they are only a hint; the tables are authoritative)");
        }
        self.reset_all(consumer, &reset);
        self.publish_gauges();
        let took = job.started.elapsed();
        tracing::debug!(committed_any = job.committed_any, reset = reset.len(), tables = ?job.tables_took, total = ?took, "flush settled");
        if job.committed_any {
            self.metrics.flushes.inc();
            self.metrics.flush_seconds.observe(took.as_secs_f64());
            if took > Duration::from_secs(5) {
                tracing::warn!(took = ?took, tables = ?job.tables_took, "slow flush");
            }
        }
    }

    fn reopen_sinks(&mut self) {
        let store = self.store.clone();
        let mut delay = Duration::from_millis(200);
        let sinks = loop {
            match self.rt.block_on(open_sinks(&store)) {
                Ok(s) => break s,
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?delay, "reopening the tables failed");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        self.committer =
            Some(Committer { cfg: self.cfg.clone(), sinks, producer: self.producer.clone(), metrics: self.metrics.clone() });
    }

    fn reset_all<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, tps: &[TopicPartition]) {
        for tp in tps {
            self.metrics.flush_failures.inc();
            if let Err(e) = self.reset_partition(consumer, tp) {
                tracing::error!(partition = %tp, error = %e, "resetting partition failed; dropping it from this instance until the next rebalance");
                self.parts.retain(|p| p.tp != *tp);
                self.last_part = 0;
            }
        }
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

    /// Publishes one settled partition's counters.
    fn publish_counts(&mut self, c: Counts) {
        if c.skipped_offsets > 0 {
            // The seq-based loss audit shows what this cost, per poller.
            tracing::warn!(offsets = c.skipped_offsets,
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

    fn publish_gauges(&mut self) {
        let now = now_ms();
        for p in &mut self.parts {
            // While replaying offsets `events` already holds, keep the keys replay will still visit.
            let replaying = p.processed < p.marks.committed[TableKind::Events.idx()];
            p.dedup.expire(now, if replaying { p.processed } else { i64::MAX });
        }
        let keys: usize = self.parts.iter().map(|p| p.dedup.len()).sum();
        self.metrics.dedup_keys.set(keys as i64);
        let ev: u64 = self.parts.iter().map(|p| p.dedup.evictions()).sum();
        let seen = self.metrics.dedup_evictions.get();
        if ev > seen {
            self.metrics.dedup_evictions.inc_by(ev - seen);
        }
    }
}

/// Moves a partition's pending rows into per-table batches.
fn freeze(p: &mut PartitionState, out: &mut [Option<RecordBatch>; 4], now: i64) -> Result<()> {
    if !p.events.is_empty() {
        out[TableKind::Events.idx()] = Some(p.events.finish()?);
    }
    if !p.nodes.is_empty() {
        out[TableKind::Nodes.idx()] = Some(p.nodes.finish()?);
    }
    if !p.heartbeats.is_empty() {
        out[TableKind::Heartbeats.idx()] = Some(p.heartbeats.finish()?);
    }
    if !p.receipts.is_empty() {
        let mut rb = estate_schemas::ReceiptsBuilder::default();
        p.receipts.drain_into(&mut rb);
        out[TableKind::Receipts.idx()] = Some(rb.finish(now)?);
    }
    Ok(())
}

/// A flush job, on a runtime worker: DLQ first, then the tables while the
/// deduplicated stream is published.
async fn run_job(mut c: Committer, mut job: FlushJob) -> (Committer, FlushJob) {
    publish_dlq(&c, &mut job.parts).await;
    let (cfg, producer, metrics) = (c.cfg.clone(), c.producer.clone(), c.metrics.clone());
    let sinks = &mut c.sinks;
    // The deduplicated stream is at least once: a partition whose commit
    // fails is re-read and re-published.
    let deduped: Vec<(usize, Vec<DedupedRecord>)> = match &cfg.deduped_topic {
        Some(_) => job
            .parts
            .iter_mut()
            .enumerate()
            .filter(|(_, p)| !p.reset && !p.deduped.is_empty())
            .map(|(i, p)| (i, std::mem::take(&mut p.deduped)))
            .collect(),
        None => Vec::new(),
    };
    let names: Vec<String> = deduped.iter().map(|(i, _)| job.parts[*i].tp.to_string()).collect();
    let publish = async {
        match (&cfg.deduped_topic, deduped.is_empty()) {
            (Some(topic), false) => publish_deduped(&producer, topic, &deduped, &names, &metrics).await,
            _ => Vec::new(),
        }
    };
    let tables_started = Instant::now();
    let tables = async {
        let mut committed_any = false;
        for kind in TableKind::ALL {
            let t = kind.idx();
            match commit_table(&mut sinks[t], kind, &mut job.parts, cfg.source_id.as_deref(), &mut job.last_commit[t], &metrics).await {
                Ok(done) => committed_any |= done,
                Err(e) => {
                    tracing::error!(table = kind.name(), error = %e, "flush failed; the partitions in it will be re-read from the tables");
                    for p in job.parts.iter_mut().filter(|p| p.behind(kind)) {
                        p.reset = true;
                    }
                }
            }
        }
        committed_any
    };
    let (committed_any, failed) = tokio::join!(tables, publish);
    job.committed_any = committed_any;
    job.tables_took = tables_started.elapsed();
    for i in failed {
        job.parts[i].reset = true;
    }
    (c, job)
}

/// Step 1: DLQ records must be durable before receipts claim them.
async fn publish_dlq(c: &Committer, parts: &mut [JobPart]) {
    for p in parts.iter_mut().filter(|p| !p.reset && !p.dlq.is_empty()) {
        let offsets: Vec<String> = p.dlq.iter().map(|d| d.offset.to_string()).collect();
        let recs: Vec<OutRecord<'_>> = p
            .dlq
            .iter()
            .zip(&offsets)
            .map(|(d, off)| OutRecord {
                key: d.key.as_deref(),
                value: &d.payload,
                headers: vec![
                    ("estate-reason", d.reason.code().into_owned()),
                    ("estate-source-topic", p.tp.topic.to_string()),
                    ("estate-source-partition", p.tp.partition.to_string()),
                    ("estate-source-offset", off.clone()),
                    ("estate-ingested-at", rfc3339(d.ingested_at_ms)),
                ],
            })
            .collect();
        match publish_all(&c.producer, &c.cfg.dlq_topic, &recs, PUBLISH_ROUNDS).await {
            Ok(()) => {
                c.metrics.dlq_records.inc_by(recs.len() as u64);
            }
            Err(e) => {
                tracing::error!(partition = %p.tp, error = %e, "DLQ publish failed; partition will be re-read");
                p.reset = true;
            }
        }
    }
}

/// Step 2 for one table: one fenced commit of every partition behind in it.
/// Returns whether it committed.
async fn commit_table(
    sink: &mut DeltaSink,
    kind: TableKind,
    parts: &mut [JobPart],
    source_id: Option<&str>,
    last_commit: &mut Instant,
    metrics: &Metrics,
) -> Result<bool> {
    let t = kind.idx();
    let mut included: Vec<usize> = (0..parts.len()).filter(|&i| parts[i].behind(kind)).collect();
    if included.is_empty() {
        return Ok(false);
    }
    let mut batches: Vec<(usize, RecordBatch)> =
        included.iter().filter_map(|&i| parts[i].batches[t].take().map(|b| (i, b))).collect();
    let lag = included.iter().map(|&i| parts[i].target - parts[i].expected[t]).max().unwrap_or(0);
    if batches.is_empty() && lag < IDLE_COMMIT_OFFSETS && last_commit.elapsed() < IDLE_COMMIT_INTERVAL {
        return Ok(false);
    }
    loop {
        let claims: Vec<TxnClaim> = included
            .iter()
            .map(|&i| {
                let p = &parts[i];
                let c = p.expected[t];
                TxnClaim {
                    app_id: app_id(source_id, &p.tp.topic, p.tp.partition),
                    expected: (c >= 0).then_some(c),
                    target: p.target,
                }
            })
            .collect();
        let data = merge(kind, batches.iter().map(|(_, b)| b))?;
        let rows: usize = data.iter().map(RecordBatch::num_rows).sum();
        match sink.commit_fenced(&claims, &data).await? {
            (CommitOutcome::Committed, bytes) => {
                for &i in &included {
                    parts[i].committed[t] = true;
                }
                *last_commit = Instant::now();
                let l = label("table", kind.name());
                metrics.rows_written.get_or_create(&l).inc_by(rows as u64);
                metrics.bytes_written.get_or_create(&l).inc_by(bytes);
                return Ok(true);
            }
            (CommitOutcome::Lost(ids), _) => {
                let lost: Vec<usize> = included
                    .iter()
                    .copied()
                    .filter(|&i| ids.contains(&app_id(source_id, &parts[i].tp.topic, parts[i].tp.partition)))
                    .collect();
                for &i in &lost {
                    tracing::warn!(partition = %parts[i].tp, table = kind.name(),
                        "another consumer committed this partition: fenced off, not committing");
                    metrics.partitions_lost.inc();
                    parts[i].reset = true;
                }
                included.retain(|i| !lost.contains(i));
                batches.retain(|(i, _)| !lost.contains(i));
                if included.is_empty() {
                    return Ok(false);
                }
            }
        }
    }
}

/// Publishes each partition's deduplicated records; returns the indices of
/// the partitions whose records could not all be published.
async fn publish_deduped(
    producer: &FutureProducer,
    topic: &str,
    jobs: &[(usize, Vec<DedupedRecord>)],
    names: &[String],
    metrics: &Metrics,
) -> Vec<usize> {
    let mut failed = Vec::new();
    for ((i, records), name) in jobs.iter().zip(names) {
        let recs: Vec<OutRecord<'_>> = records
            .iter()
            .map(|d| OutRecord { key: Some(d.tenant.as_bytes()), value: &d.json, headers: vec![("estate-event-id", d.event_id.clone())] })
            .collect();
        match publish_all(producer, topic, &recs, PUBLISH_ROUNDS).await {
            Ok(()) => {
                metrics.deduped_records.inc_by(recs.len() as u64);
            }
            Err(e) => {
                tracing::error!(partition = %name, error = %e, "deduplicated stream publish failed; partition will be re-read and re-published");
                failed.push(*i);
            }
        }
    }
    failed
}

/// Combines per-partition batches into the commit's data; `events` rows are
/// sorted by (tenant, date, node, event, element, time) for compression and
/// for pruning on node and time.
fn merge<'a>(kind: TableKind, batches: impl Iterator<Item = &'a RecordBatch>) -> Result<Vec<RecordBatch>> {
    let all: Vec<&RecordBatch> = batches.collect();
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let merged = concat_batches(&kind.schema(), all.iter().copied())?;
    if kind != TableKind::Events || merged.num_rows() < 2 {
        return Ok(vec![merged]);
    }
    let cols: Vec<ArrayRef> = EVENTS_SORT_KEY
        .iter()
        .map(|c| merged.column_by_name(c).expect("events column").clone())
        .collect();
    let idx = sort_indices(&cols)?;
    Ok(vec![take_record_batch(&merged, &idx)?])
}

/// The order `events` rows are written in.
const EVENTS_SORT_KEY: [&str; 6] = ["tenant", "date", "node", "event", "element", "time"];

/// The row order of `cols` ascending, nulls first (as `lexsort_to_indices`
/// with default options), computed on Arrow's row format: one byte-string
/// comparison per pair instead of one typed comparison per column (in
/// ingest's end-to-end profile, `memcmp` fell from 7 % to 4.4 % of CPU).
fn sort_indices(cols: &[ArrayRef]) -> std::result::Result<UInt32Array, ArrowError> {
    let conv = RowConverter::new(cols.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
    let rows = conv.convert_columns(cols)?;
    let n = u32::try_from(rows.num_rows()).map_err(|_| ArrowError::ComputeError("batch too large to sort".into()))?;
    let mut idx: Vec<u32> = (0..n).collect();
    idx.sort_unstable_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
    Ok(UInt32Array::from(idx))
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Array, StringArray, TimestampMicrosecondArray};
    use deltalake::arrow::compute::{SortColumn, lexsort_to_indices};

    /// The row-format sort orders exactly as `lexsort_to_indices`, nulls and
    /// ties included.
    #[test]
    fn sort_indices_matches_lexsort() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let n = 5_000;
        let s = |next: &mut dyn FnMut(u64) -> u64, k: u64| -> ArrayRef {
            Arc::new((0..n).map(|_| (next(10) > 0).then(|| format!("v{}", next(k)))).collect::<StringArray>())
        };
        let cols: Vec<ArrayRef> = vec![
            s(&mut next, 3),
            s(&mut next, 2),
            s(&mut next, 50),
            s(&mut next, 7),
            s(&mut next, 4),
            Arc::new((0..n).map(|_| (next(10) > 0).then(|| next(20) as i64)).collect::<TimestampMicrosecondArray>().with_timezone("UTC")),
        ];
        let ours = sort_indices(&cols).unwrap();
        let want = lexsort_to_indices(&cols.iter().map(|c| SortColumn { values: c.clone(), options: None }).collect::<Vec<_>>(), None).unwrap();
        assert_eq!(ours.len(), n);
        // Ties may come in any order; the sorted keys must be identical.
        let key = |i: u32| cols.iter().map(|c| {
            let a = c.slice(i as usize, 1);
            format!("{a:?}")
        }).collect::<Vec<_>>();
        for (a, b) in ours.values().iter().zip(want.values()) {
            assert_eq!(key(*a), key(*b));
        }
        let mut seen = ours.values().to_vec();
        seen.sort_unstable();
        assert_eq!(seen, (0..n as u32).collect::<Vec<_>>(), "a permutation");
        assert!(ours.null_count() == 0);
    }
}
