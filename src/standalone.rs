//! `estate standalone`: the whole estate in one process.
//!
//! An embedded Kafka-protocol broker (librdkafka's mock cluster, on
//! 127.0.0.1, in memory) or a real cluster (`--brokers`), one ingest
//! instance, the query service (HTTP and Flight SQL) and, with `--demo`, a
//! simulated estate. The Delta tables and `tokens.toml` live under
//! `--data-dir`, so a second start carries on with the earlier data.
//!
//! Shutdown order (Ctrl-C or SIGTERM): the demo stops and flushes its
//! producer; with the embedded broker, ingest drains what the broker holds
//! (bounded by `--drain-timeout`), because the broker's queue dies with the
//! process; then ingest flushes and commits, and the query service stops.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use estate_loadgen::demo::{self, DemoConfig, DemoStats};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

/// Options of `estate standalone`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "The embedded broker keeps its queue in memory: messages it holds but ingest has \
not yet committed are lost if the process is killed (a clean Ctrl-C drains them first). \
Everything committed is in the Delta tables under --data-dir and survives restarts. \
For a durable queue, point --brokers at a Kafka cluster.")]
pub(crate) struct StandaloneArgs {
    /// Directory of the Delta tables and `tokens.toml`; created if missing.
    #[arg(long, env = "ESTATE_DATA_DIR", default_value = "./estate-data")]
    pub(crate) data_dir: PathBuf,

    /// Use this Kafka cluster (`host:port[,host:port]`) instead of the
    /// embedded in-memory broker.
    #[arg(long, env = "ESTATE_BROKERS")]
    pub(crate) brokers: Option<String>,

    /// librdkafka setting for `--brokers`, e.g. `security.protocol=SASL_SSL` (repeatable).
    #[arg(long = "kafka-opt", env = "ESTATE_KAFKA_OPTS", value_parser = estate_ingest::parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub(crate) kafka_opts: Vec<(String, String)>,

    /// Run a simulated estate (tenants `demo-t01` …) so that data flows at once.
    #[arg(long, env = "ESTATE_DEMO")]
    pub(crate) demo: bool,

    /// Demo tenants.
    #[arg(long, env = "ESTATE_DEMO_TENANTS", default_value_t = 3)]
    pub(crate) demo_tenants: usize,

    /// Demo pollers per tenant.
    #[arg(long, env = "ESTATE_DEMO_POLLERS", default_value_t = 4)]
    pub(crate) demo_pollers: usize,

    /// Demo nodes per poller.
    #[arg(long, env = "ESTATE_DEMO_NODES", default_value_t = 25)]
    pub(crate) demo_nodes: usize,

    /// Demo messages per second (events, node snapshots, heartbeats, a few
    /// duplicates and malformed messages).
    #[arg(long, env = "ESTATE_DEMO_RATE", default_value_t = 200.0)]
    pub(crate) demo_rate: f64,

    /// HTTP SQL API, `/healthz` and query `/metrics`.
    #[arg(long, env = "ESTATE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) http_addr: SocketAddr,

    /// Arrow Flight SQL.
    #[arg(long, env = "ESTATE_FLIGHT_ADDR", default_value = "127.0.0.1:50051")]
    pub(crate) flight_addr: SocketAddr,

    /// Ingest `/metrics` and `/healthz`.
    #[arg(long, env = "ESTATE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub(crate) metrics_addr: SocketAddr,

    /// Partitions of the embedded broker's events and deduped topics. One
    /// ingest reads them all, so more partitions buy no parallelism here;
    /// they cost the embedded broker, which searches each partition's
    /// retained message sets linearly on every fetch (a librdkafka mock
    /// limitation; a real Kafka has no such cost).
    #[arg(long, env = "ESTATE_PARTITIONS", default_value_t = 2)]
    pub(crate) partitions: i32,

    /// Ingest commits at least this often (with the refresh interval, this
    /// sets how soon an event is queryable).
    #[arg(long, env = "ESTATE_FLUSH_INTERVAL", default_value = "500ms", value_parser = estate_ingest::parse_duration)]
    pub(crate) flush_interval: Duration,

    /// The query service looks for new commits this often.
    #[arg(long, env = "ESTATE_REFRESH_INTERVAL", default_value = "100ms", value_parser = estate_ingest::parse_duration)]
    pub(crate) refresh_interval: Duration,

    /// Compact, expire (30 days) and vacuum the tables this often; `0s` turns
    /// the background compactor off (`estate compact` does the same job as a
    /// separate process).
    #[arg(long, env = "ESTATE_COMPACT_INTERVAL", default_value = "5m", value_parser = estate_ingest::parse_duration)]
    pub(crate) compact_interval: Duration,

    /// On shutdown with the embedded broker, how long ingest may take to
    /// drain what the broker still holds.
    #[arg(long, env = "ESTATE_DRAIN_TIMEOUT", default_value = "30s", value_parser = estate_ingest::parse_duration)]
    pub(crate) drain_timeout: Duration,
}

const EVENTS_TOPIC: &str = "estate.events";
const TOKENS_FILE: &str = "tokens.toml";

/// Runs the estate until `shutdown` resolves.
pub(crate) async fn run(args: StandaloneArgs, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    if args.partitions < 1 {
        bail!("--partitions must be at least 1");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving the data directory {}", args.data_dir.display()))?;
    let store = data_dir.to_str().context("the data directory path is not UTF-8")?.to_owned();

    let demo_cfg = args.demo.then(|| DemoConfig {
        brokers: String::new(),
        kafka_opts: args.kafka_opts.clone(),
        topic: EVENTS_TOPIC.into(),
        tenants: args.demo_tenants,
        pollers: args.demo_pollers,
        nodes: args.demo_nodes,
        rate: args.demo_rate,
        heartbeat_interval: Duration::from_secs(10),
    });
    let tenants = demo_cfg.as_ref().map(DemoConfig::tenant_ids).unwrap_or_default();
    let tokens_path = data_dir.join(TOKENS_FILE);
    let tokens = ensure_tokens(&tokens_path, &tenants)?;

    let (embedded, brokers, source_id) = match &args.brokers {
        Some(b) => (None, b.clone(), String::new()),
        None => {
            let e = Embedded::start(args.partitions)?;
            let b = e.bootstrap.clone();
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            (Some(e), b, format!("embedded-{started}"))
        }
    };

    let mut ingest_args: estate_ingest::IngestArgs =
        estate_ingest::args_from(&["--brokers", &brokers, "--store", &store]).context("ingest settings")?;
    ingest_args.metrics_addr = args.metrics_addr;
    ingest_args.flush_interval = args.flush_interval;
    ingest_args.kafka_opts = args.kafka_opts.clone();
    if embedded.is_some() {
        // The mock broker answers a fetch only when fetch.wait.max.ms runs out
        // (it does not wake a waiting fetch when data arrives): keep it short.
        ingest_args.consumer_opts.push(("fetch.wait.max.ms".into(), "20".into()));
    }
    ingest_args.source_id = source_id;
    ingest_args.compact_interval = Some(args.compact_interval);
    let tokens_str = tokens_path.to_str().context("the tokens path is not UTF-8")?;
    let mut query_args: estate_query::QueryArgs =
        estate_ingest::args_from(&["--store", &store, "--auth-file", tokens_str]).context("query settings")?;
    query_args.http_addr = args.http_addr;
    query_args.flight_addr = args.flight_addr;
    query_args.refresh_interval = args.refresh_interval;

    let ingest = estate_ingest::start(ingest_args).await.context("starting ingest")?;
    let query = match estate_query::start(query_args).await {
        Ok(q) => q,
        Err(e) => {
            let _ = ingest.stop().await;
            return Err(anyhow::Error::new(e).context("starting the query service"));
        }
    };

    let stop_demo = Arc::new(AtomicBool::new(false));
    let demo_stats = Arc::new(DemoStats::default());
    let demo_thread = demo_cfg.clone().map(|mut cfg| {
        cfg.brokers = brokers.clone();
        let stop = stop_demo.clone();
        let stats = demo_stats.clone();
        std::thread::Builder::new()
            .name("estate-demo".into())
            .spawn(move || demo::run(&cfg, &stop, &stats))
    });
    let demo_thread = demo_thread.transpose().context("starting the demo thread")?;

    print_banner(&Banner {
        data_dir: &data_dir,
        brokers: &brokers,
        embedded: embedded.is_some(),
        http: query.http_addr,
        flight: query.flight_addr,
        metrics: ingest.metrics_addr,
        demo: demo_cfg.as_ref(),
        tokens: &tokens,
    });
    tracing::info!(http = %query.http_addr, flight = %query.flight_addr, brokers = %brokers, "standalone ready");

    tokio::select! {
        () = shutdown => {}
        e = query.failed() => {
            stop_demo.store(true, Ordering::Relaxed);
            let _ = ingest.stop().await;
            return Err(anyhow::Error::new(e).context("query service failed"));
        }
        () = ingest.died() => {
            stop_demo.store(true, Ordering::Relaxed);
            let _ = ingest.stop().await;
            query.stop().await;
            bail!("ingest's consumer thread ended unexpectedly (see the log above); committed data is safe in {}", data_dir.display());
        }
    }

    stop_demo.store(true, Ordering::Relaxed);
    if let Some(t) = demo_thread {
        match tokio::task::spawn_blocking(move || t.join()).await {
            Ok(Ok(Ok(sent))) => tracing::info!(sent, "demo stopped"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "demo failed"),
            _ => tracing::error!("demo thread panicked"),
        }
    }
    if embedded.is_some() {
        drain(&brokers, &ingest, args.drain_timeout).await;
    }
    let stopped = ingest.stop().await;
    query.stop().await;
    drop(embedded);
    stopped.context("stopping ingest")?;
    println!("estate standalone stopped; data is in {}", data_dir.display());
    Ok(())
}

/// Options of the hidden `estate broker`.
#[derive(Debug, clap::Args)]
pub(crate) struct BrokerArgs {
    /// Partitions of the events and deduplicated-stream topics.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

/// Runs the embedded broker alone until `shutdown`; prints its address.
pub(crate) async fn broker_only(args: BrokerArgs, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let e = Embedded::start(args.partitions)?;
    println!("estate broker listening on {}", e.bootstrap);
    shutdown.await;
    drop(e);
    Ok(())
}

/// The embedded broker, alive while its thread waits.
struct Embedded {
    bootstrap: String,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Embedded {
    fn start(partitions: i32) -> anyhow::Result<Embedded> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        // The mock cluster is not `Send`: it lives and dies on its own thread.
        let thread = std::thread::Builder::new()
            .name("estate-broker".into())
            .spawn(move || {
                let mock = match rdkafka::mocking::MockCluster::new(1) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("starting the embedded broker: {e}")));
                        return;
                    }
                };
                for (topic, n) in [(EVENTS_TOPIC, partitions), ("estate.dlq", 1), ("estate.deduped", partitions)] {
                    if let Err(e) = mock.create_topic(topic, n, 1) {
                        let _ = ready_tx.send(Err(format!("creating topic {topic} on the embedded broker: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(mock.bootstrap_servers()));
                let _ = stop_rx.recv();
                drop(mock);
            })
            .context("starting the embedded broker thread")?;
        let bootstrap = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the embedded broker did not start within 10 s")?
            .map_err(anyhow::Error::msg)?;
        Ok(Embedded { bootstrap, stop: Some(stop_tx), thread: Some(thread) })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until ingest has read everything the broker holds on the events
/// topics, or `timeout`; says how much is left if it gives up.
async fn drain(brokers: &str, ingest: &estate_ingest::Running, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let client: BaseConsumer = match ClientConfig::new().set("bootstrap.servers", brokers).create() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check what the embedded broker still holds");
            return;
        }
    };
    loop {
        let positions = ingest.positions();
        let left = tokio::task::block_in_place(|| backlog(&client, &positions));
        match left {
            Ok(0) => {
                tracing::info!("ingest has read everything the embedded broker holds");
                return;
            }
            Ok(n) if Instant::now() >= deadline => {
                tracing::warn!(messages = n, "drain timed out; these messages in the embedded broker are lost with it");
                return;
            }
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!(error = %e, "drain timed out");
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Messages on the events topics that ingest has not read yet.
fn backlog(client: &BaseConsumer, positions: &[(String, i32, i64)]) -> anyhow::Result<i64> {
    let md = client.fetch_metadata(None, Duration::from_secs(5)).context("fetching metadata")?;
    let mut left = 0;
    for t in md.topics() {
        let name = t.name();
        if name != EVENTS_TOPIC && !name.starts_with(&format!("{EVENTS_TOPIC}.")) {
            continue;
        }
        for p in t.partitions() {
            let (_, high) = client
                .fetch_watermarks(name, p.id(), Duration::from_secs(5))
                .with_context(|| format!("watermarks of {name}/{}", p.id()))?;
            let at = positions
                .iter()
                .find(|(tn, pn, _)| tn == name && *pn == p.id())
                .map_or(0, |x| x.2);
            left += (high - at).max(0);
        }
    }
    Ok(left)
}

/// Tokens to print: freshly generated ones only.
struct Tokens {
    operator: Option<String>,
    new_tenants: Vec<(String, String)>,
    path: PathBuf,
}

/// Makes sure `tokens.toml` has an operator token and one per tenant;
/// returns the ones generated now (shown once, never logged).
fn ensure_tokens(path: &Path, tenants: &[String]) -> anyhow::Result<Tokens> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut text = existing.clone().unwrap_or_else(|| {
        "# estate query tokens, generated by `estate standalone`. Keep this file private.\n\
         # Reload a running query service with SIGHUP after editing.\n"
            .to_owned()
    });
    let parsed: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let entries = parsed.get("token").and_then(|t| t.as_array()).cloned().unwrap_or_default();
    let has = |key: &str, val: &str| entries.iter().any(|e| e.get(key).and_then(|v| v.as_str()) == Some(val));
    let mut out = Tokens { operator: None, new_tenants: Vec::new(), path: path.to_owned() };
    if !has("role", "operator") {
        let t = new_token();
        let _ = write!(text, "\n[[token]]\ntoken = \"{t}\"\nrole = \"operator\"\n");
        out.operator = Some(t);
    }
    for tenant in tenants {
        if !has("tenant", tenant) {
            let t = new_token();
            let _ = write!(text, "\n[[token]]\ntoken = \"{t}\"\ntenant = \"{tenant}\"\n");
            out.new_tenants.push((tenant.clone(), t));
        }
    }
    if out.operator.is_some() || !out.new_tenants.is_empty() {
        write_private(path, &text)?;
    }
    Ok(out)
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    let mut s = String::from("est_");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Writes a file readable by its owner only, atomically.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

struct Banner<'a> {
    data_dir: &'a Path,
    brokers: &'a str,
    embedded: bool,
    http: SocketAddr,
    flight: SocketAddr,
    metrics: SocketAddr,
    demo: Option<&'a DemoConfig>,
    tokens: &'a Tokens,
}

/// The start-up screen, on stdout (tokens never go to the logs).
fn print_banner(b: &Banner<'_>) {
    let mut s = String::new();
    let _ = writeln!(s, "\nestate standalone is running\n");
    let _ = writeln!(s, "  data        {}", b.data_dir.display());
    if b.embedded {
        let _ = writeln!(s, "  broker      {}  (embedded, in memory; use --brokers for a durable Kafka)", b.brokers);
    } else {
        let _ = writeln!(s, "  broker      {}", b.brokers);
    }
    let _ = writeln!(s, "  sql         http://{}/v1/sql", b.http);
    let _ = writeln!(s, "  flight-sql  grpc://{}", b.flight);
    let _ = writeln!(s, "  metrics     http://{}/metrics (ingest), http://{}/metrics (query)", b.metrics, b.http);
    if let Some(d) = b.demo {
        let _ = writeln!(
            s,
            "  demo        {} tenants, {} pollers, {} nodes, {} msg/s",
            d.tenants,
            d.tenants * (d.pollers + d.pollers.min(1)),
            d.tenants * d.pollers * d.nodes,
            d.rate
        );
    }
    let t = b.tokens;
    if t.operator.is_some() || !t.new_tenants.is_empty() {
        let _ = writeln!(s, "\n  tokens generated now (shown once; kept in {}):", t.path.display());
        if let Some(op) = &t.operator {
            let _ = writeln!(s, "    operator    {op}");
        }
        for (tenant, tok) in &t.new_tenants {
            let _ = writeln!(s, "    {tenant:<11} {tok}");
        }
    } else {
        let _ = writeln!(s, "\n  tokens      in {}", t.path.display());
    }
    let auth = match &t.operator {
        Some(op) => op.clone(),
        None => format!(
            "$(awk -F'\"' '/^role = \"operator\"/{{print prev}} {{prev=$2}}' '{}' | head -1)",
            t.path.display()
        ),
    };
    let _ = writeln!(s, "\n  try:");
    let _ = writeln!(
        s,
        "    curl -s http://{}/v1/sql -H \"Authorization: Bearer {auth}\" \\\n      -d '{{\"sql\": \"SELECT tenant, count(*) AS events, max(time) AS latest FROM events GROUP BY tenant ORDER BY tenant\"}}'",
        b.http
    );
    let _ = writeln!(s, "\n  Ctrl-C drains, commits and exits; a restart on the same --data-dir carries on.\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}
