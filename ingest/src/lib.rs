//! `estate-ingest`: from Kafka to Delta Lake tables, deduplicated, exactly once.
//!
//! An ingest instance is a Kafka consumer-group member. It decodes each
//! message with `estate-schemas`, sends rejects to the DLQ with their reason,
//! drops duplicates of `(tenant, event_id)` within the dedup window, and
//! commits rows to the `events`, `nodes`, `heartbeats` and `receipts` Delta
//! tables.
//!
//! Guarantees (see `docs/ingest.md`):
//! - **Exactly once into the tables.** Each table commit carries, per Kafka
//!   partition, the last offset it includes as a Delta application
//!   transaction. The tables, not Kafka, say where a partition resumes, and
//!   each table is resumed from its own watermark, so a crash between two
//!   tables' commits is replayed exactly.
//! - **Zombie fencing.** Before each commit the stored versions are checked
//!   against what this instance resumed from or last committed, on the very
//!   snapshot the commit is made on; a racing commit for the same partition
//!   fails as a Delta concurrent-transaction conflict.
//! - **Nothing dropped.** Rejects go to the DLQ before the commit that
//!   accounts for them; anything that cannot be committed is re-read.
//! - **At least once on the deduplicated stream**, each record carrying its
//!   `event_id`.

mod checkpoint;
mod config;
mod consumer;
mod dedup;
pub mod dlq;
mod error;
mod faults;
mod flush;
mod kafka;
pub mod lifecycle;
mod metrics;
mod partition;
mod pipeline;
mod receipts;
mod restore;
mod store;
mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use config::{IngestArgs, args_from, parse_bytes, parse_duration, parse_kv};
pub use dedup::{DedupWindow, Verdict, key as dedup_key};
pub use error::{Error, ErrorKind, Result};
pub use faults::{FaultSpec, FaultyStore};
pub use metrics::Metrics;
pub use partition::{PartitionState, ProcessConfig, TopicPartition, Watermarks};
pub use store::{Store, parse_store_url};
pub use table::{DeltaSink, TableKind, app_id, writer_properties};

use pipeline::{Pipeline, PipelineConfig};

/// Runs one ingest instance until `shutdown` resolves, then flushes, commits
/// and leaves the consumer group.
pub async fn run(args: IngestArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let running = start(args).await?;
    tokio::select! {
        () = shutdown => running.stop().await,
        () = running.died() => {
            let _ = running.stop().await;
            Err(Error::Config("the consumer thread ended unexpectedly (see the log above)".into()))
        }
    }
}

/// How long a stop may take: the final flush plus leaving the consumer group.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A started ingest instance.
#[derive(Debug)]
pub struct Running {
    /// Where `/metrics` and `/healthz` listen.
    pub metrics_addr: std::net::SocketAddr,
    /// The instance's metrics.
    pub metrics: Arc<Metrics>,
    pipeline: Arc<Mutex<Pipeline>>,
    stop: Arc<AtomicBool>,
    worker: std::thread::JoinHandle<()>,
    compactor: Option<(tokio::task::JoinHandle<()>, tokio::sync::watch::Sender<bool>)>,
}

impl Running {
    /// Per assigned partition: (topic, partition, next offset to process).
    pub fn positions(&self) -> Vec<(String, i32, i64)> {
        self.pipeline.lock().unwrap_or_else(|e| e.into_inner()).positions()
    }

    /// Resolves only if the consumer thread ends without being asked to.
    pub async fn died(&self) {
        loop {
            if self.worker.is_finished() && !self.stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Flushes, commits, leaves the consumer group and waits for the consumer
    /// thread to end.
    pub async fn stop(self) -> Result<()> {
        if let Some((mut task, stop)) = self.compactor {
            let _ = stop.send(true);
            // A pass cut short is safe (one partition per commit); don't wait long.
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task).await.is_err() {
                task.abort();
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        self.metrics.set_ready(false);
        let worker = self.worker;
        let joined = tokio::time::timeout(STOP_TIMEOUT, tokio::task::spawn_blocking(move || worker.join())).await;
        match joined {
            Ok(j) => {
                j.map_err(|e| Error::Config(format!("consumer thread: {e}")))?
                    .map_err(|_| Error::Config("consumer thread panicked".into()))?;
                tracing::info!("ingest stopped cleanly");
                Ok(())
            }
            // Leaving the group waits on the broker. Exiting without it is
            // safe: every partition resumes from the tables' watermarks, and
            // whatever the last flush did not commit is read again.
            Err(_) => Err(Error::Config(format!(
                "the consumer did not stop within {}s (the broker may be unreachable); exiting without leaving the group: \
                 nothing is lost, the next owner of each partition resumes from the tables",
                STOP_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Starts one ingest instance: binds its metrics endpoint, restores its
/// state from the tables as partitions are assigned, and consumes on a
/// thread of its own until [`Running::stop`].
pub async fn start(args: IngestArgs) -> Result<Running> {
    let metrics = Arc::new(Metrics::default());
    let metrics_addr = metrics::serve(args.metrics_addr, metrics.clone()).await?;
    tracing::info!(addr = %metrics_addr, "metrics listening");

    let store = Store::open(&args.store, args.store_opts.iter().cloned().collect(), args.test_inject_store_faults)?;
    if let Some(f) = &args.test_inject_store_faults {
        tracing::warn!(?f, "TESTING: object store fault injection is on");
    }
    let producer = kafka::producer(&args.brokers, &args.kafka_opts)?;
    let cfg = PipelineConfig {
        process: ProcessConfig {
            max_message_bytes: args.max_message_bytes,
            max_future_ms: args.max_future.as_millis() as i64,
            deduped_enabled: !args.deduped_topic.is_empty(),
            dedup_window_ms: args.dedup_window.as_millis() as i64,
            dedup_max_keys: args.dedup_max_keys,
        },
        flush_interval: args.flush_interval,
        flush_max_rows: args.flush_max_rows,
        side_table_interval: args.side_table_interval,
        dlq_topic: args.dlq_topic.clone(),
        deduped_topic: (!args.deduped_topic.is_empty()).then(|| args.deduped_topic.clone()),
        source_id: (!args.source_id.is_empty()).then(|| args.source_id.clone()),
    };
    let pipeline = Arc::new(Mutex::new(Pipeline::open(cfg, &store, producer, metrics.clone()).await?));
    tracing::info!(store = %store.url(), brokers = %args.brokers, group = %args.group, topic = %args.topic, "ingest starting");

    let consumer_opts: Vec<(String, String)> = args.kafka_opts.iter().chain(&args.consumer_opts).cloned().collect();
    let consumer = consumer::subscribe(
        &args.brokers,
        &args.group,
        &args.topic,
        &consumer_opts,
        pipeline.clone(),
        metrics.clone(),
    )?;
    metrics.set_ready(true);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let pipeline2 = pipeline.clone();
    let worker = std::thread::Builder::new()
        .name("estate-ingest-consumer".into())
        .spawn(move || consumer::run_loop(consumer, pipeline2, stop2))
        .map_err(|source| Error::Io { what: "spawning consumer thread".into(), source })?;
    let compactor = match args.compact_interval {
        Some(every) if !every.is_zero() => Some(spawn_compactor(&args, every)?),
        _ => None,
    };
    Ok(Running { metrics_addr, metrics, pipeline, stop, worker, compactor })
}

/// Runs `estate compact` passes every `every` on this process's runtime.
fn spawn_compactor(
    args: &IngestArgs,
    every: std::time::Duration,
) -> Result<(tokio::task::JoinHandle<()>, tokio::sync::watch::Sender<bool>)> {
    let mut c: lifecycle::CompactArgs = args_from(&["--store", args.store.as_str()])
        .map_err(|e| Error::Config(format!("compaction settings: {e}")))?;
    c.store_opts = args.store_opts.clone();
    c.interval = Some(every);
    let compactor = lifecycle::Compactor::new(c)?;
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        if let Err(e) = compactor.run(async move { let _ = rx.wait_for(|s| *s).await; }).await {
            tracing::error!(error = %e, "compactor stopped");
        }
    });
    tracing::info!(every = ?every, "compacting the tables from this process");
    Ok((task, tx))
}
