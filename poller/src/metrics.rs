//! Prometheus metrics of the poller agent (`estate_poller_*`) and the
//! `/metrics` + `/healthz` endpoint. Counters are bumped once per batch;
//! spool gauges are refreshed by housekeeping.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

/// All poller metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Input lines read.
    pub lines_read: Counter,
    /// Input lines that could not be parsed (skipped, logged with their number).
    pub malformed: Counter,
    /// Records appended to the spool (events and heartbeats).
    pub records_spooled: Counter,
    /// Records acknowledged by the broker and released from the spool.
    pub records_acked: Counter,
    /// Records found already delivered after a restart (not re-sent).
    pub records_found_delivered: Counter,
    /// Heartbeats spooled.
    pub heartbeats: Counter,
    /// Producer sessions that failed and were restarted.
    pub send_errors: Counter,
    /// Records in the spool not yet acknowledged.
    pub spool_depth: Gauge,
    /// Bytes of the spool's segment files.
    pub spool_bytes: Gauge,
    /// 1 while input is paused because the spool is at its limit.
    pub spool_full: Gauge,
    /// Last seq assigned.
    pub last_seq: Gauge,
    /// Last seq acknowledged.
    pub acked_seq: Gauge,
    /// Current epoch.
    pub epoch: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("estate_poller");
        let m = Metrics {
            registry: Registry::default(),
            lines_read: Counter::default(),
            malformed: Counter::default(),
            records_spooled: Counter::default(),
            records_acked: Counter::default(),
            records_found_delivered: Counter::default(),
            heartbeats: Counter::default(),
            send_errors: Counter::default(),
            spool_depth: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_full: Gauge::default(),
            last_seq: Gauge::default(),
            acked_seq: Gauge::default(),
            epoch: Gauge::default(),
            ready: AtomicBool::new(false),
        };
        r.register("lines_read", "Input lines read", m.lines_read.clone());
        r.register("malformed_lines", "Input lines skipped as malformed", m.malformed.clone());
        r.register("records_spooled", "Records appended to the spool", m.records_spooled.clone());
        r.register("records_acked", "Records acknowledged by the broker", m.records_acked.clone());
        r.register("records_found_delivered", "Records found delivered after a restart", m.records_found_delivered.clone());
        r.register("heartbeats", "Heartbeats spooled", m.heartbeats.clone());
        r.register("send_errors", "Producer sessions restarted after an error", m.send_errors.clone());
        r.register("spool_depth", "Records waiting in the spool", m.spool_depth.clone());
        r.register("spool_bytes", "Bytes of spool segment files", m.spool_bytes.clone());
        r.register("spool_full", "1 while input is paused at the spool limit", m.spool_full.clone());
        r.register("last_seq", "Last seq assigned", m.last_seq.clone());
        r.register("acked_seq", "Last seq acknowledged by the broker", m.acked_seq.clone());
        r.register("epoch", "Current epoch", m.epoch.clone());
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

    /// Marks the agent ready (spool open, threads running).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// Serves `/metrics` and `/healthz` until the process exits.
pub(crate) async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("binding metrics address {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| Error::Internal(format!("metrics address: {e}")))?;
    let m1 = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], m.render()) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let m = metrics.clone();
                async move {
                    if m.ready.load(Ordering::Relaxed) {
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
