//! Prometheus metrics of the query service (`estate_query_*`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// All query metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Queries by final status (`ok`, `bad_sql`, `forbidden`, `timeout`, …) and interface.
    pub queries: Family<Labels, Counter>,
    /// Query latency, seconds, from admission to the last row.
    pub latency: Histogram,
    /// Rows answered.
    pub rows: Counter,
    /// Parquet bytes read.
    pub bytes_scanned: Counter,
    /// Files opened by scans.
    pub files_scanned: Counter,
    /// Files of the referenced tables that the principal could read but the scan skipped.
    pub files_pruned: Counter,
    /// Queries running now.
    pub running: Gauge,
    /// Auth file reloads, by outcome.
    pub auth_reloads: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("estate_query");
        let m = Metrics {
            queries: Family::default(),
            latency: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            rows: Counter::default(),
            bytes_scanned: Counter::default(),
            files_scanned: Counter::default(),
            files_pruned: Counter::default(),
            running: Gauge::default(),
            auth_reloads: Family::default(),
            registry: Registry::default(),
        };
        r.register("queries", "Queries by status and interface", m.queries.clone());
        r.register("latency_seconds", "Query latency", m.latency.clone());
        r.register("rows", "Rows answered", m.rows.clone());
        r.register("bytes_scanned", "Parquet bytes read", m.bytes_scanned.clone());
        r.register("files_scanned", "Data files opened", m.files_scanned.clone());
        r.register("files_pruned", "Data files skipped by partition and statistics pruning", m.files_pruned.clone());
        r.register("running", "Queries running", m.running.clone());
        r.register("auth_reloads", "Auth file reloads by outcome", m.auth_reloads.clone());
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts a finished query.
    pub fn query_done(&self, interface: &'static str, status: &'static str) {
        self.queries.get_or_create(&vec![("status", status.to_owned()), ("interface", interface.to_owned())]).inc();
    }

    /// Counts an auth reload.
    pub fn reload(&self, ok: bool) {
        self.auth_reloads.get_or_create(&vec![("outcome", if ok { "ok" } else { "failed" }.to_owned())]).inc();
    }
}
