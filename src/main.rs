//! `estate`: the high-availability event layer for network monitoring estates.
//!
//! One binary; each stage is a subcommand. Settings come from flags,
//! `ESTATE_*` environment variables and an optional TOML file (`--config`),
//! in that order of precedence.

mod cli_doc;
mod config_file;
mod standalone;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in `mi_option_t`; the
/// `libmimalloc-sys` bindings do not name it).
#[cfg(not(feature = "system-alloc"))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the OS at once instead of after mimalloc's default
/// delay. Delta commits and snapshot updates allocate and free large Arrow
/// buffers on tokio's blocking threads; with the delay, an ingest instance
/// committing every 500 ms held 35–50 % more RSS (measured: 360–410 against
/// 240–270 MiB over 1,800 commits; see `docs/reliability.md`). The
/// `MIMALLOC_PURGE_DELAY` environment variable, when set, wins.
/// (Transparent huge pages are compiled out with mimalloc's `no_thp` feature.)
#[cfg(not(feature = "system-alloc"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer in mimalloc's option
        // table; any value is valid for purge_delay (0 = purge immediately).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

/// estate: consolidated, deduplicated, tenant-isolated monitoring events.
#[derive(Debug, Parser)]
#[command(name = "estate", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// TOML settings file: a table per subcommand (`[ingest]`) whose keys are
    /// the long flag names, e.g. `flush-interval = "1s"`.
    #[arg(long, env = "ESTATE_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "ESTATE_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info,estate_ingest=debug`.
    #[arg(long, env = "ESTATE_LOG", default_value = "info,buoyant_kernel=warn,deltalake_core=warn,librdkafka=warn", global = true)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole estate in one process: an embedded Kafka-protocol broker
    /// (in memory; or a real cluster with --brokers), ingest, the query
    /// service (HTTP and Flight SQL) and, with --demo, a simulated estate.
    Standalone(standalone::StandaloneArgs),
    /// Maintain the Delta tables beside live ingest: compact small files per
    /// (tenant, date), expire data past its retention, vacuum, checkpoint.
    Compact(estate_ingest::lifecycle::CompactArgs),
    /// Print the command-line reference (docs/cli.md) as Markdown.
    #[command(hide = true)]
    CliReference,
    /// TESTING: run only the embedded in-memory broker (librdkafka's mock
    /// cluster) with estate's topics, print its address, wait for a signal.
    #[command(hide = true)]
    Broker(standalone::BrokerArgs),
    /// TESTING: relay TCP connections from one address to another (the
    /// scenario runner's bridge into a network namespace).
    #[command(hide = true)]
    TcpRelay(estate_loadgen::scenario::procs::RelayArgs),
    /// Consume events from Kafka and commit them, deduplicated and exactly
    /// once, to the Delta tables on the store.
    Ingest(estate_ingest::IngestArgs),
    /// Answer SQL over the estate, tenant-isolated, over HTTP and Arrow
    /// Flight SQL.
    Query(estate_query::QueryArgs),
    /// Run the edge agent: tail an NMIS event log (or JSON lines), stamp and
    /// spool every event durably, and forward the spool to Kafka.
    Poller(estate_poller::PollerArgs),
    /// Simulate an estate of tenants × pollers × nodes into Kafka and write
    /// the ground truth; with --capacity, step the rate up against a running
    /// pipeline and measure its capacity.
    Loadgen(Box<estate_loadgen::LoadgenArgs>),
    /// Compare the estate (query service + DLQ) with a loadgen ground truth;
    /// exits non-zero on any mismatch.
    Verify(estate_loadgen::VerifyArgs),
    /// Operator tools for the dead-letter topic: `inspect` counts and shows
    /// rejected messages, `replay` re-sends fixed ones to their source topic.
    Dlq(estate_ingest::dlq::DlqArgs),
    /// One screen of estate health: pollers, loss audit, freshness per tenant
    /// (query service) and lag, event and DLQ rates (ingest metrics). Exits
    /// non-zero when a source is unavailable.
    Status(estate_loadgen::StatusArgs),
    /// Run whole-pipeline fault scenarios (tansu, pollers, two ingest
    /// instances, the query service) and verify exact accounting; needs
    /// tansu, and root for the WAN-partition and spool-full scenarios.
    Scenario(estate_loadgen::ScenarioArgs),
}

fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("initialising logs: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

fn main() -> anyhow::Result<()> {
    #[cfg(not(feature = "system-alloc"))]
    tune_allocator();
    let args = config_file::merged_args(std::env::args_os().collect())?;
    let cli = Cli::parse_from(args);
    init_tracing(cli.log_format, &cli.log)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("estate-rt")
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(async move {
        match cli.command {
            Command::Standalone(args) => standalone::run(args, shutdown_signal()).await.context("standalone failed"),
            Command::Compact(args) => {
                let compactor = estate_ingest::lifecycle::Compactor::new(args).context("compact")?;
                let report = compactor.run(shutdown_signal()).await.context("compaction failed")?;
                println!("{}", serde_json::to_string(&report).context("report")?);
                Ok(())
            }
            Command::CliReference => {
                print!("{}", cli_doc::markdown());
                Ok(())
            }
            Command::Broker(args) => standalone::broker_only(args, shutdown_signal()).await,
            Command::TcpRelay(args) => tokio::task::spawn_blocking(move || estate_loadgen::scenario::procs::relay_forever(&args))
                .await
                .context("relay thread")?
                .context("tcp-relay"),
            Command::Ingest(args) => estate_ingest::run(args, shutdown_signal()).await.map_err(|e| {
                let kind = e.kind();
                anyhow::Error::new(e).context(format!("ingest failed ({kind:?} error)"))
            }),
            Command::Query(args) => estate_query::run(args, shutdown_signal())
                .await
                .map_err(|e| anyhow::Error::new(e).context("query service failed")),
            Command::Poller(args) => estate_poller::run(args, shutdown_signal()).await.map_err(|e| {
                let kind = e.kind();
                anyhow::Error::new(e).context(format!("poller failed ({kind:?} error)"))
            }),
            Command::Loadgen(args) if args.capacity.enabled => tokio::task::spawn_blocking(move || estate_loadgen::run_capacity(&args).map(|_| ()))
                .await
                .context("loadgen thread")?
                .context("capacity run failed"),
            Command::Loadgen(args) => tokio::task::spawn_blocking(move || estate_loadgen::run_loadgen(&args).map(|_| ()))
                .await
                .context("loadgen thread")?
                .context("loadgen failed"),
            Command::Verify(args) => tokio::task::spawn_blocking(move || estate_loadgen::run_verify(&args))
                .await
                .context("verify thread")?
                .context("verify failed"),
            Command::Dlq(args) => estate_ingest::dlq::run(args).await.map_err(|e| {
                let kind = e.kind();
                anyhow::Error::new(e).context(format!("dlq failed ({kind:?} error)"))
            }),
            Command::Status(args) => tokio::task::spawn_blocking(move || estate_loadgen::run_status(&args))
                .await
                .context("status thread")?
                .context("status"),
            Command::Scenario(args) => tokio::task::spawn_blocking(move || estate_loadgen::run_scenario(&args))
                .await
                .context("scenario thread")?
                .context("scenario"),
        }
    });
    // The outcome is decided: do not wait on blocking work stuck on the
    // network (a consumer leaving its group while the broker is gone).
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}
