//! `estate-query`: consolidated SQL over the estate's Delta tables,
//! tenant-isolated, over HTTP and Arrow Flight SQL.
//!
//! Guarantees:
//! - **Isolation.** A tenant token's session resolves each table's file set
//!   from the Delta snapshot restricted to `tenant=<t>/` files
//!   ([`catalog`]); another tenant's files never enter its plans, EXPLAIN
//!   output or errors. Nothing in the SQL can widen that set: the service is
//!   read-only ([`guard`]) and sessions have no way to register tables.
//! - **Consistency.** A query reads one pinned snapshot per table, taken at
//!   admission; new commits become visible within `--refresh-interval`
//!   without a restart and without replaying the whole log.
//! - **Bounded.** Every query runs under a memory pool (spilling where
//!   DataFusion can), a time limit and a row limit; each tenant has its own
//!   concurrency budget.

pub mod auth;
pub mod catalog;
mod config;
pub mod engine;
pub mod error;
pub mod flight;
pub mod guard;
pub mod http;
mod metrics;
pub mod scan;
pub mod session;
pub mod views;

use std::collections::HashMap;
use std::sync::Arc;

pub use config::{QueryArgs, parse_bytes};
pub use error::{Error, Result};
pub use metrics::Metrics;

use crate::auth::Auth;
use crate::catalog::Catalog;
use crate::engine::{Engine, Limits};
use crate::session::SessionFactory;
use crate::views::PollerThresholds;

/// Runs the query service until `shutdown` resolves.
pub async fn run(args: QueryArgs, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    let running = start(args).await?;
    tokio::select! {
        () = shutdown => {}
        r = running.failed() => return Err(r),
    }
    running.stop().await;
    Ok(())
}

/// A started query service.
#[derive(Debug)]
pub struct Running {
    /// Where `POST /v1/sql`, `/healthz` and `/metrics` listen.
    pub http_addr: std::net::SocketAddr,
    /// Where Arrow Flight SQL listens.
    pub flight_addr: std::net::SocketAddr,
    http: tokio::sync::Mutex<tokio::task::JoinHandle<std::io::Result<()>>>,
    flight: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    refresher: tokio::task::JoinHandle<()>,
    stop_tx: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Resolves only if the HTTP server stops by itself, with the reason.
    pub async fn failed(&self) -> Error {
        let mut http = self.http.lock().await;
        let r = (&mut *http).await;
        Error::Internal(format!("HTTP server stopped: {r:?}"))
    }

    /// Stops accepting, lets the requests in flight finish, and stops
    /// refreshing the catalog.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        self.refresher.abort();
        // Idle keep-alive connections would hold a graceful stop forever.
        let grace = std::time::Duration::from_secs(5);
        let mut http = self.http.into_inner();
        let mut flight = self.flight;
        if tokio::time::timeout(grace, &mut http).await.is_err() {
            tracing::warn!("HTTP connections still open after 5 s; closing them");
            http.abort();
        }
        if tokio::time::timeout(grace, &mut flight).await.is_err() {
            tracing::warn!("Flight SQL connections still open after 5 s; closing them");
            flight.abort();
        }
        tracing::info!("query service stopped");
    }
}

/// Starts the query service: loads the tokens and the tables' snapshots,
/// binds HTTP and Flight SQL, and serves until [`Running::stop`].
pub async fn start(args: QueryArgs) -> Result<Running> {
    if args.poller_late_after >= args.poller_down_after {
        return Err(Error::Config("--poller-late-after must be shorter than --poller-down-after".into()));
    }
    if args.max_concurrent_per_tenant == 0 {
        return Err(Error::Config("--max-concurrent-per-tenant must be at least 1".into()));
    }
    let auth = Arc::new(Auth::load(&args.auth_file)?);
    let options: HashMap<String, String> = args.store_opts.iter().cloned().collect();
    let store = estate_ingest::Store::open(&args.store, options, None).map_err(|e| Error::Config(e.to_string()))?;
    let catalog = Catalog::open(store).await?;
    let refresher = tokio::spawn(catalog.clone().refresh_loop(args.refresh_interval));

    let metrics = Arc::new(Metrics::default());
    let sessions = SessionFactory::new(
        args.query_threads,
        args.query_memory,
        args.footer_cache,
        args.spill_dir.clone(),
        PollerThresholds { late_after: args.poller_late_after, down_after: args.poller_down_after },
    );
    catalog.set_footer_cache(sessions.footer_cache());
    let limits = Limits {
        timeout: args.query_timeout,
        max_rows: args.max_rows,
        per_tenant: args.max_concurrent_per_tenant,
        queue_timeout: args.queue_timeout,
    };
    let engine = Arc::new(Engine::new(catalog.clone(), sessions, limits, metrics.clone()));

    #[cfg(unix)]
    {
        let auth = auth.clone();
        let metrics = metrics.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|source| Error::Io { what: "installing the SIGHUP handler".into(), source })?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match auth.reload() {
                    Ok(n) => {
                        metrics.reload(true);
                        tracing::info!(tokens = n, "auth file reloaded");
                    }
                    Err(e) => {
                        metrics.reload(false);
                        tracing::error!(error = %e, "auth file reload failed; the previous tokens stay in force");
                    }
                }
            }
        });
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (http_addr, http) = http::bind(args.http_addr, engine.clone(), auth.clone(), catalog.clone(), stop_rx.clone()).await?;
    let flight_listener = tokio::net::TcpListener::bind(args.flight_addr)
        .await
        .map_err(|source| Error::Io { what: format!("binding Flight SQL on {}", args.flight_addr), source })?;
    let flight_addr = flight_listener
        .local_addr()
        .map_err(|source| Error::Io { what: "Flight SQL local address".into(), source })?;
    let mut stop_flight = stop_rx;
    let flight = tonic::transport::Server::builder()
        .add_service(flight::FlightSql::new(engine.clone(), auth.clone()).into_server())
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(flight_listener), async move {
            let _ = stop_flight.wait_for(|s| *s).await;
        });
    tracing::info!(%http_addr, %flight_addr, store = catalog.root(), "query service ready");
    Ok(Running {
        http_addr,
        flight_addr,
        http: tokio::sync::Mutex::new(tokio::spawn(http)),
        flight: tokio::spawn(flight),
        refresher,
        stop_tx,
    })
}
