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

mod config;
mod consumer;
mod dedup;
mod error;
mod faults;
mod kafka;
mod metrics;
mod partition;
mod pipeline;
mod receipts;
mod restore;
mod store;
mod table;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use config::{IngestArgs, parse_duration, parse_kv};
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
    let metrics = Arc::new(Metrics::default());
    let addr = metrics::serve(args.metrics_addr, metrics.clone()).await?;
    tracing::info!(%addr, "metrics listening");

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
        dlq_topic: args.dlq_topic.clone(),
        deduped_topic: (!args.deduped_topic.is_empty()).then(|| args.deduped_topic.clone()),
    };
    let pipeline = Arc::new(Mutex::new(Pipeline::open(cfg, &store, producer, metrics.clone()).await?));
    tracing::info!(store = %store.url(), brokers = %args.brokers, group = %args.group, topic = %args.topic, "ingest starting");

    let consumer = consumer::subscribe(
        &args.brokers,
        &args.group,
        &args.topic,
        &args.kafka_opts,
        pipeline.clone(),
        metrics.clone(),
    )?;
    metrics.set_ready(true);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let worker = std::thread::Builder::new()
        .name("estate-ingest-consumer".into())
        .spawn(move || consumer::run_loop(consumer, pipeline, stop2))
        .map_err(|source| Error::Io { what: "spawning consumer thread".into(), source })?;
    shutdown.await;
    stop.store(true, Ordering::Relaxed);
    metrics.set_ready(false);
    tokio::task::spawn_blocking(move || worker.join())
        .await
        .map_err(|e| Error::Config(format!("consumer thread: {e}")))?
        .map_err(|_| Error::Config("consumer thread panicked".into()))?;
    tracing::info!("ingest stopped cleanly");
    Ok(())
}
