//! `estate loadgen`: drives a simulated estate into Kafka at a target rate
//! and writes the ground truth.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::error::{Error, Result};
use crate::estate::{Estate, EstateConfig, Msg};
use crate::mix::{DEFAULT_MIX, Mix};
use crate::truth::Truth;

/// Options of `estate loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long, env = "ESTATE_BROKERS")]
    pub brokers: String,

    /// Where to write the ground-truth JSON file (for `estate verify`).
    #[arg(long, env = "ESTATE_TRUTH", required_unless_present = "enabled")]
    pub truth: Option<PathBuf>,

    /// Tenants.
    #[arg(long, env = "ESTATE_LOADGEN_TENANTS", default_value_t = 3)]
    pub tenants: usize,

    /// Pollers (sites) per tenant.
    #[arg(long, env = "ESTATE_LOADGEN_POLLERS", default_value_t = 2)]
    pub pollers: usize,

    /// Nodes per poller.
    #[arg(long, env = "ESTATE_LOADGEN_NODES", default_value_t = 100)]
    pub nodes: usize,

    /// Target rate, messages per second (all kinds).
    #[arg(long, env = "ESTATE_LOADGEN_RATE", default_value_t = 1000.0)]
    pub rate: f64,

    /// How long to run.
    #[arg(long, env = "ESTATE_LOADGEN_DURATION", default_value = "60s", value_parser = estate_poller::parse_duration)]
    pub duration: Duration,

    /// Share of event messages re-sent as exact duplicates.
    #[arg(long, env = "ESTATE_LOADGEN_DUPLICATES", default_value_t = 0.05)]
    pub duplicates: f64,

    /// Share of steps that add a malformed message (cycling through every DLQ reason).
    #[arg(long, env = "ESTATE_LOADGEN_MALFORMED", default_value_t = 0.01)]
    pub malformed: f64,

    /// The first N pollers of each tenant run as mirror pairs (two agents, same events).
    #[arg(long, env = "ESTATE_LOADGEN_MIRROR_PAIRS", default_value_t = 1)]
    pub mirror_pairs: usize,

    /// Events topic (or per-tenant topic prefix).
    #[arg(long, env = "ESTATE_TOPIC", default_value = "estate.events")]
    pub topic: String,

    /// Send to `<topic>.<tenant>`.
    #[arg(long, env = "ESTATE_PER_TENANT_TOPIC")]
    pub per_tenant_topic: bool,

    /// Tenant ids are `<prefix>-t01`, `<prefix>-t02`, …
    #[arg(long, env = "ESTATE_LOADGEN_TENANT_PREFIX", default_value = "lg")]
    pub tenant_prefix: String,

    /// Run id (lowercase alphanumeric); random by default.
    #[arg(long, env = "ESTATE_LOADGEN_RUN_ID")]
    pub run_id: Option<String>,

    /// Random seed; random by default.
    #[arg(long, env = "ESTATE_LOADGEN_SEED")]
    pub seed: Option<u64>,

    /// Payload size of the `too_large` rejects: above ingest's --max-message-bytes.
    #[arg(long, env = "ESTATE_LOADGEN_TOO_LARGE_BYTES", default_value_t = 1_100_000)]
    pub too_large_bytes: usize,

    /// Each simulated poller sends a heartbeat this often (and one at the end).
    #[arg(long, env = "ESTATE_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = estate_poller::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Event mix file (default: the NMIS 9 mix built in, see data/event-mix.json).
    #[arg(long, env = "ESTATE_LOADGEN_MIX")]
    pub mix: Option<PathBuf>,

    /// librdkafka setting passed through (repeatable).
    #[arg(long = "kafka-opt", env = "ESTATE_KAFKA_OPTS", value_parser = estate_poller::parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub kafka_opts: Vec<(String, String)>,

    /// Capacity mode (`--capacity`) and its options.
    #[command(flatten)]
    pub capacity: crate::capacity::CapacityArgs,
}

#[derive(Debug, Default)]
pub(crate) struct Ctx {
    pub(crate) failed: AtomicU64,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r
            && self.failed.fetch_add(1, Ordering::Relaxed) < 5
        {
            tracing::error!(error = %e, "a loadgen message was not delivered");
        }
    }
}

/// The simulated estate `args` describe, its pollers at `epoch`, and its run id.
pub(crate) fn simulator(args: &LoadgenArgs, epoch: i64) -> Result<(Estate, String)> {
    let mix_text = match &args.mix {
        Some(p) => std::fs::read_to_string(p).map_err(Error::io("reading event mix", p))?,
        None => DEFAULT_MIX.to_owned(),
    };
    let mix = Mix::parse(&mix_text)?;
    if args.tenants == 0 || args.pollers == 0 || args.nodes == 0 || args.rate <= 0.0 {
        return Err(Error::Config("--tenants, --pollers, --nodes and --rate must be positive".into()));
    }
    for (name, v) in [("--duplicates", args.duplicates), ("--malformed", args.malformed)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(Error::Config(format!("{name} must be within 0..1")));
        }
    }
    let run_id = args.run_id.clone().unwrap_or_else(|| format!("{:06x}", rand::random::<u32>() & 0xff_ffff));
    if run_id.is_empty() || !run_id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(Error::Config("--run-id must be lowercase alphanumeric".into()));
    }
    let cfg = EstateConfig {
        tenants: args.tenants,
        pollers: args.pollers,
        nodes: args.nodes,
        duplicates: args.duplicates,
        malformed: args.malformed,
        mirror_pairs: args.mirror_pairs,
        tenant_prefix: args.tenant_prefix.clone(),
        run_id: run_id.clone(),
        epoch,
        topic: args.topic.clone(),
        per_tenant_topic: args.per_tenant_topic,
        too_large_bytes: args.too_large_bytes,
        seed: args.seed.unwrap_or_else(rand::random),
    };
    let probe = format!("{}-t01", cfg.tenant_prefix);
    if !estate_schemas::is_valid_tenant(&probe) {
        return Err(Error::Config(format!("--tenant-prefix gives invalid tenant ids such as {probe:?}")));
    }
    Ok((Estate::new(cfg, mix), run_id))
}

/// Runs `estate loadgen`; returns the ground truth it wrote.
pub fn run(args: &LoadgenArgs) -> Result<Truth> {
    let truth_path = args.truth.as_deref().ok_or_else(|| Error::Config("--truth is required".into()))?;
    let started = chrono::Utc::now();
    let (mut estate, _) = simulator(args, started.timestamp())?;
    let producer = producer(&args.brokers, &args.kafka_opts, args.too_large_bytes)?;
    let target = (args.rate * args.duration.as_secs_f64()) as u64;
    let pb = ProgressBar::new(target);
    pb.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} msgs {per_sec} {msg}")
            .map_err(|e| Error::Config(e.to_string()))?
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut next_hb = start + args.heartbeat_interval;
    let mut sent = 0u64;
    let mut out: Vec<Msg> = Vec::new();
    loop {
        let elapsed = start.elapsed();
        let now_ms = chrono::Utc::now().timestamp_millis();
        if elapsed >= args.duration {
            break;
        }
        let due = (args.rate * elapsed.as_secs_f64()) as u64;
        sent += send_due(&mut estate, &producer, &mut out, now_ms, sent, due, (&mut next_hb, args.heartbeat_interval))?;
        pb.set_position(sent.min(target));
        producer.poll(Duration::ZERO);
        if out.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    out.clear();
    estate.heartbeats(chrono::Utc::now().timestamp_millis(), &mut out);
    for m in &out {
        send(&producer, m)?;
    }
    pb.set_message("flushing");
    producer.flush(Duration::from_secs(300)).map_err(Error::kafka("flushing"))?;
    pb.finish_with_message("done");
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(Error::Config(format!("{failed} messages were not delivered; no truth file written (it would be wrong)")));
    }
    let truth = estate.truth(started.to_rfc3339());
    truth.write(truth_path)?;
    tracing::info!(messages = truth.sent.messages, events = truth.sent.events, seconds = start.elapsed().as_secs_f64(), truth = %truth_path.display(), "loadgen done");
    Ok(truth)
}

/// Generates what is due (`due` messages in all, `sent` of them already
/// sent, at most 10,000 at once) plus every poller's heartbeat when
/// `heartbeat.0` has come, and sends them. Returns how many were sent; the
/// messages stay in `out` for the caller.
pub(crate) fn send_due(
    estate: &mut Estate,
    producer: &BaseProducer<Ctx>,
    out: &mut Vec<Msg>,
    now_ms: i64,
    sent: u64,
    due: u64,
    heartbeat: (&mut Instant, Duration),
) -> Result<u64> {
    out.clear();
    while sent + (out.len() as u64) < due && out.len() < 10_000 {
        estate.step(now_ms, out);
    }
    let (next_hb, every) = heartbeat;
    if Instant::now() >= *next_hb {
        estate.heartbeats(now_ms, out);
        *next_hb += every;
    }
    for m in out.iter() {
        send(producer, m)?;
    }
    Ok(out.len() as u64)
}

/// The simulator's producer: idempotent, acks=all, lz4; delivery failures
/// are counted in its context.
pub(crate) fn producer(brokers: &str, kafka_opts: &[(String, String)], too_large_bytes: usize) -> Result<BaseProducer<Ctx>> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", brokers);
    for (k, v) in [
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("compression.type", "lz4"),
        ("linger.ms", "5"),
        ("message.timeout.ms", "300000"),
        ("queue.buffering.max.messages", "500000"),
    ] {
        cc.set(k, v);
    }
    cc.set("message.max.bytes", (too_large_bytes + (64 << 10)).max(1_000_000).to_string());
    for (k, v) in kafka_opts {
        cc.set(k, v);
    }
    cc.create_with_context(Ctx::default()).map_err(Error::kafka("creating producer"))
}

pub(crate) fn send(p: &BaseProducer<Ctx>, m: &Msg) -> Result<()> {
    loop {
        let mut r = BaseRecord::<[u8], [u8], ()>::with_opaque_to(&m.topic, ()).payload(&m.payload);
        if let Some(k) = &m.key {
            r = r.key(k);
        }
        match p.send(r) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => p.poll(Duration::from_millis(10)),
            Err((e, _)) => return Err(Error::kafka(format!("producing to {}", m.topic))(e)),
        }
    }
}
