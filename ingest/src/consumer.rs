//! The Kafka consumer-group member: a dedicated thread polls, processes and
//! flushes; the rebalance callback (which runs on that same thread, inside
//! `poll`) resumes assigned partitions from the tables and flushes revoked
//! ones before letting go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::TopicPartitionList;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// The consumer context: owns the pipeline so that rebalance callbacks can
/// reach it.
#[derive(Debug)]
pub(crate) struct IngestContext {
    pipeline: Arc<Mutex<Pipeline>>,
    metrics: Arc<Metrics>,
}

/// The consumer type.
pub(crate) type IngestConsumer = BaseConsumer<IngestContext>;

fn lock(p: &Mutex<Pipeline>) -> MutexGuard<'_, Pipeline> {
    // A panic while holding the lock aborts the process anyway (panic=abort
    // is not assumed, so recover the guard rather than poison-cascade).
    p.lock().unwrap_or_else(|e| e.into_inner())
}

fn pairs(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

impl ClientContext for IngestContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                if *p < 0 || part.consumer_lag < 0 {
                    continue;
                }
                let l = vec![("topic", topic.clone()), ("partition", p.to_string())];
                self.metrics.consumer_lag.get_or_create(&l).set(part.consumer_lag);
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // A pattern subscription with no per-tenant topic yet is normal; a
        // missing named topic is not.
        if is_no_topic_yet(&error) && reason.contains('^') {
            tracing::debug!(%error, reason, "no topic matches the per-tenant pattern yet");
        } else {
            tracing::error!(%error, reason, "Kafka client error");
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }
}

impl ConsumerContext for IngestContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let tps = pairs(tpl);
                let result = lock(&self.pipeline).assign(consumer, &tps);
                match result {
                    Ok(starts) => {
                        for (topic, partition, offset) in starts {
                            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                                tracing::error!(topic, partition, error = %e, "setting start offset failed");
                            }
                        }
                        if let Err(e) = consumer.assign(tpl) {
                            tracing::error!(error = %e, "assign failed");
                        }
                    }
                    Err(e) => {
                        // Without watermarks we must not read: taking nothing makes the
                        // group coordinator hand the partitions out again.
                        tracing::error!(error = %e, "restoring assigned partitions failed; leaving the group to retry");
                        let _ = consumer.unassign();
                        consumer.unsubscribe();
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let tps = pairs(tpl);
                lock(&self.pipeline).revoke(consumer, &tps);
                let _ = consumer.unassign();
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; unassigning");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::debug!(error = %e, "Kafka offset commit failed (a hint only)");
        }
    }
}

/// Creates the consumer and subscribes it to the shared topic and the
/// per-tenant topics (`<topic>.<tenant>`).
pub(crate) fn subscribe(
    brokers: &str,
    group: &str,
    topic: &str,
    kafka_opts: &[(String, String)],
    pipeline: Arc<Mutex<Pipeline>>,
    metrics: Arc<Metrics>,
) -> Result<IngestConsumer> {
    let cfg = crate::kafka::client_config(
        brokers,
        kafka_opts,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            // A SIGKILLed instance's partitions stall until its session
            // times out: 10 s (heartbeats come from librdkafka's own thread,
            // so a slow flush does not end the session; --consumer-opt
            // overrides).
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "3000"),
            ("topic.metadata.refresh.interval.ms", "10000"),
            ("statistics.interval.ms", "5000"),
            ("isolation.level", "read_committed"),
        ],
    );
    let consumer: IngestConsumer = cfg
        .create_with_context(IngestContext { pipeline, metrics })
        .map_err(Error::kafka("creating consumer"))?;
    let pattern = format!("^{}\\.[a-z0-9][a-z0-9_-]*$", topic.replace('.', "\\."));
    consumer
        .subscribe(&[topic, pattern.as_str()])
        .map_err(Error::kafka(format!("subscribing to {topic} and {pattern}")))?;
    Ok(consumer)
}

/// Runs the poll loop until `shutdown`, then flushes, commits and leaves the
/// group cleanly.
fn is_no_topic_yet(e: &rdkafka::error::KafkaError) -> bool {
    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)
}

pub(crate) fn run_loop(consumer: IngestConsumer, pipeline: Arc<Mutex<Pipeline>>, shutdown: Arc<AtomicBool>) {
    let started = std::time::Instant::now();
    let mut first = true;
    while !shutdown.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if std::mem::take(&mut first) {
                    tracing::debug!(after = ?started.elapsed(), "first message");
                }
                let mut p = lock(&pipeline);
                p.process(m.topic(), m.partition(), m.offset(), m.key(), m.payload().unwrap_or(&[]));
                p.poll_flush(&consumer);
                if p.flush_due() {
                    p.flush(&consumer, false);
                }
            }
            // Reported with its topic by the `error` callback above.
            Some(Err(e)) if is_no_topic_yet(&e) => tracing::debug!(error = %e, "consumer: unknown topic"),
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {
                let mut p = lock(&pipeline);
                p.poll_flush(&consumer);
                if p.flush_due() {
                    p.flush(&consumer, false);
                }
            }
        }
    }
    tracing::info!("shutting down: flushing and leaving the group");
    lock(&pipeline).flush(&consumer, true);
    consumer.unsubscribe();
    // Serve the revocation callback so the group rebalances promptly.
    for _ in 0..20 {
        if consumer.assignment().map(|a| a.count() == 0).unwrap_or(true) {
            break;
        }
        let _ = consumer.poll(Duration::from_millis(100));
    }
    drop(consumer);
}
