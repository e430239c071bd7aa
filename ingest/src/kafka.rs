//! Kafka client settings and reliable publishing (DLQ, deduplicated stream).

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::error::{Error, Result};

/// Base client settings: brokers plus pass-through `--kafka-opt` settings
/// (which win, so SASL/SSL and tuning work).
pub(crate) fn client_config(brokers: &str, opts: &[(String, String)], defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in opts {
        c.set(k, v);
    }
    c
}

/// The producer ingest uses for the DLQ and the deduplicated stream:
/// idempotent, acks=all, lz4.
pub(crate) fn producer(brokers: &str, opts: &[(String, String)]) -> Result<FutureProducer> {
    client_config(
        brokers,
        opts,
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "120000"),
            // A record above this travels in a batch of its own, so one
            // oversized DLQ record cannot fail its neighbours with it.
            ("batch.size", "262144"),
        ],
    )
    .create()
    .map_err(Error::kafka("creating producer"))
}

/// Header on a record re-sent truncated: the original value's length.
pub(crate) const HEADER_TRUNCATED: &str = "estate-truncated";

/// What a record the broker refuses as too large is cut to.
const TRUNCATED_BYTES: usize = 64 * 1024;

/// One record to publish.
#[derive(Debug, Clone)]
pub(crate) struct OutRecord<'a> {
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub value: &'a [u8],
    /// Headers.
    pub headers: Vec<(&'static str, String)>,
}

/// Publishes every record and waits for every acknowledgement; failed records
/// are re-sent with backoff for up to `rounds` rounds. Order across records is
/// not guaranteed on retry; each record carries its own identity.
pub(crate) async fn publish_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[OutRecord<'_>],
    rounds: u32,
) -> Result<()> {
    publish_routed(producer, records, |_| (topic, None), rounds).await
}

/// Like [`publish_all`], with each record's topic and (optionally) partition
/// given by `route(index)`; `None` partitions by key.
pub(crate) async fn publish_routed<'t>(
    producer: &FutureProducer,
    records: &[OutRecord<'_>],
    route: impl Fn(usize) -> (&'t str, Option<i32>),
    rounds: u32,
) -> Result<()> {
    let mut todo: Vec<usize> = (0..records.len()).collect();
    // Records the broker refused as too large are re-sent cut to
    // TRUNCATED_BYTES, marked with `estate-truncated: <original length>`:
    // a DLQ record that cannot be stored whole must not stop the partition.
    let mut oversize: std::collections::HashSet<usize> = std::collections::HashSet::new();
    for round in 0..rounds {
        if todo.is_empty() {
            return Ok(());
        }
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(round))).await;
        }
        let mut inflight: FuturesUnordered<_> = todo
            .iter()
            .map(|&i| {
                let r = &records[i];
                let (topic, partition) = route(i);
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 1);
                for (k, v) in &r.headers {
                    headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
                }
                let mut value = r.value;
                if oversize.contains(&i) && value.len() > TRUNCATED_BYTES {
                    value = &value[..TRUNCATED_BYTES];
                    let len = r.value.len().to_string();
                    headers = headers.insert(Header { key: HEADER_TRUNCATED, value: Some(len.as_bytes()) });
                }
                let mut rec = FutureRecord::<[u8], [u8]>::to(topic).payload(value).headers(headers);
                if let Some(k) = r.key {
                    rec = rec.key(k);
                }
                if let Some(p) = partition {
                    rec = rec.partition(p);
                }
                let fut = producer.send(rec, Timeout::After(Duration::from_secs(30)));
                async move { (i, fut.await) }
            })
            .collect();
        let mut failed = Vec::new();
        let mut last_err = None;
        while let Some((i, res)) = inflight.next().await {
            if let Err((e, _)) = res {
                if matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))
                    && records[i].value.len() > TRUNCATED_BYTES
                    && oversize.insert(i)
                {
                    tracing::warn!(topic = route(i).0, bytes = records[i].value.len(), keep = TRUNCATED_BYTES, "record too large for the broker; re-sending it truncated");
                }
                failed.push(i);
                last_err = Some(e);
            }
        }
        if let Some(e) = &last_err {
            let topic = route(failed[0]).0;
            tracing::warn!(topic, failed = failed.len(), error = %e, round, "publish failed; retrying");
        }
        todo = failed;
    }
    if todo.is_empty() {
        return Ok(());
    }
    let mut topics: Vec<&str> = todo.iter().map(|&i| route(i).0).collect();
    topics.sort_unstable();
    topics.dedup();
    Err(Error::Publish { topic: topics.join(","), failed: todo.len() })
}
