//! Prometheus metrics of the ingest stage, and the `/metrics` + `/healthz`
//! HTTP endpoint. Hot-path counts are accumulated per partition and published
//! once per flush.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

type Labels = Vec<(&'static str, String)>;

/// All ingest metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Messages consumed.
    pub messages_in: Counter,
    /// Rows written, by table.
    pub rows_written: Family<Labels, Counter>,
    /// Events dropped as duplicates.
    pub duplicates: Counter,
    /// Messages rejected, by reason.
    pub rejected: Family<Labels, Counter>,
    /// Flushes completed.
    pub flushes: Counter,
    /// Parquet bytes committed, by table.
    pub bytes_written: Family<Labels, Counter>,
    /// Flush latency.
    pub flush_seconds: Histogram,
    /// Time of one table's fenced commit (write Parquet + Delta commit), by table.
    pub commit_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Partitions lost to another consumer at commit time (zombie fence).
    pub partitions_lost: Counter,
    /// Flushes that failed and were rolled back to the tables' state.
    pub flush_failures: Counter,
    /// Consumer lag, by topic and partition.
    pub consumer_lag: Family<Labels, Gauge>,
    /// Dedup keys held.
    pub dedup_keys: Gauge,
    /// Dedup keys evicted by the memory bound.
    pub dedup_evictions: Counter,
    /// Partitions assigned to this instance.
    pub partitions_assigned: Gauge,
    /// Records published to the DLQ.
    pub dlq_records: Counter,
    /// Offsets skipped because the broker no longer had them.
    pub offsets_skipped: Counter,
    /// Records published to the deduplicated stream.
    pub deduped_records: Counter,
    /// Resident set size of the whole process, read at each scrape.
    pub resident_memory: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("estate_ingest");
        let m = Metrics {
            messages_in: Counter::default(),
            rows_written: Family::default(),
            duplicates: Counter::default(),
            rejected: Family::default(),
            flushes: Counter::default(),
            bytes_written: Family::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            commit_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 14))),
            partitions_lost: Counter::default(),
            flush_failures: Counter::default(),
            consumer_lag: Family::default(),
            dedup_keys: Gauge::default(),
            dedup_evictions: Counter::default(),
            partitions_assigned: Gauge::default(),
            dlq_records: Counter::default(),
            offsets_skipped: Counter::default(),
            deduped_records: Counter::default(),
            resident_memory: Gauge::default(),
            registry: Registry::default(),
            ready: AtomicBool::new(false),
        };
        r.register("events_in", "Kafka messages consumed", m.messages_in.clone());
        r.register("rows_written", "Rows committed to Delta tables, by table", m.rows_written.clone());
        r.register("duplicates", "Events dropped by the dedup window", m.duplicates.clone());
        r.register("rejected", "Messages rejected to the DLQ, by reason", m.rejected.clone());
        r.register("flushes", "Flushes committed", m.flushes.clone());
        r.register("bytes_written", "Parquet bytes committed, by table", m.bytes_written.clone());
        r.register("flush_seconds", "Flush latency (write + commit + publish)", m.flush_seconds.clone());
        r.register("commit_seconds", "One table's fenced commit (Parquet write + Delta commit), by table", m.commit_seconds.clone());
        r.register("partitions_lost", "Partitions found owned by another consumer at commit", m.partitions_lost.clone());
        r.register("flush_failures", "Flushes abandoned and replayed from the tables", m.flush_failures.clone());
        r.register("consumer_lag", "Messages behind the high watermark", m.consumer_lag.clone());
        r.register("dedup_keys", "Dedup keys held in memory", m.dedup_keys.clone());
        r.register("dedup_evictions", "Dedup keys evicted by the memory bound", m.dedup_evictions.clone());
        r.register("partitions_assigned", "Kafka partitions assigned", m.partitions_assigned.clone());
        r.register("dlq_records", "Records published to the DLQ", m.dlq_records.clone());
        r.register("offsets_skipped", "Kafka offsets skipped because the broker no longer had them (retention) or they were transaction markers", m.offsets_skipped.clone());
        r.register("deduped_records", "Records published to the deduplicated stream", m.deduped_records.clone());
        r.register(
            "resident_memory_bytes",
            "Resident set size of the process (VmRSS of /proc/self/status), read at scrape time",
            m.resident_memory.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(b) = resident_bytes() {
            self.resident_memory.set(b as i64);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Marks the instance ready (tables opened, consumer subscribed).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the instance is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The process's resident set size: `VmRSS` of `/proc/self/status` (in kB
/// there, so no page size is needed). `None` off Linux.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb * 1024)
}

/// A label set with one label.
pub(crate) fn label(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

/// Serves `/metrics` and `/healthz` until the process exits.
pub(crate) async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Io {
        what: format!("binding metrics address {addr}"),
        source,
    })?;
    let local = listener.local_addr().map_err(|source| Error::Io { what: "metrics address".into(), source })?;
    let m1 = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        m.render(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let m = metrics.clone();
                async move {
                    if m.is_ready() {
                        (axum::http::StatusCode::OK, "ok")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn rss_is_read_at_scrape_time() {
        let text = Metrics::default().render();
        let line = text.lines().find(|l| l.starts_with("estate_ingest_resident_memory_bytes ")).expect(&text);
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // A test process holds at least a megabyte and less than a terabyte.
        assert!((1e6..1e12).contains(&v), "{line}");
    }
}
