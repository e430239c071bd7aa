//! `estate ingest` settings. Every setting is a long flag, an `ESTATE_*`
//! environment variable, and a key of the optional TOML file (`--config`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::faults::FaultSpec;

/// Parses `KEY=VALUE`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
}

/// A subcommand's options from `argv` (flags only), with every other
/// option from its `ESTATE_*` variable or default: how one process builds
/// another component's settings (standalone, the in-ingest compactor).
pub fn args_from<A: clap::Args>(argv: &[&str]) -> Result<A, clap::Error> {
    #[derive(clap::Parser)]
    struct Wrap<A: clap::Args> {
        #[command(flatten)]
        inner: A,
    }
    let full = std::iter::once("estate").chain(argv.iter().copied());
    <Wrap<A> as clap::Parser>::try_parse_from(full).map(|w| w.inner)
}

/// Parses a duration such as `1s`, `250ms`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses a byte size such as `512MiB`, `2GiB`, `64MB` or `1048576`.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?}: expected a size such as 512MiB"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("{s:?}: unknown size unit {other:?} (B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?}: too large"))
}

/// Options of `estate ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long, env = "ESTATE_BROKERS")]
    pub brokers: String,

    /// Consumer group; instances with the same group share the partitions.
    #[arg(long, env = "ESTATE_GROUP", default_value = "estate-ingest")]
    pub group: String,

    /// Store root: `file:///abs/path`, a local path, `s3://bucket/prefix` or `memory://`.
    #[arg(long, env = "ESTATE_STORE")]
    pub store: String,

    /// Shared events topic (key = tenant). Per-tenant topics `<topic>.<tenant>` are consumed too.
    #[arg(long, env = "ESTATE_TOPIC", default_value = "estate.events")]
    pub topic: String,

    /// Dead-letter topic for rejected messages.
    #[arg(long, env = "ESTATE_DLQ_TOPIC", default_value = "estate.dlq")]
    pub dlq_topic: String,

    /// Topic of the deduplicated, normalised event stream; empty to disable.
    #[arg(long, env = "ESTATE_DEDUPED_TOPIC", default_value = "estate.deduped")]
    pub deduped_topic: String,

    /// Commit at least this often.
    #[arg(long, env = "ESTATE_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// Commit `nodes`, `heartbeats` and `receipts` at most this often; `events`
    /// is committed at every flush. `heartbeats` and `receipts` are always
    /// committed together, up to the same offsets, so the loss audit never
    /// sees a false gap. 0 commits all four tables at every flush.
    #[arg(long, env = "ESTATE_SIDE_TABLE_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub side_table_interval: Duration,

    /// Commit early when this many messages are pending.
    #[arg(long, env = "ESTATE_FLUSH_MAX_ROWS", default_value_t = 500_000)]
    pub flush_max_rows: usize,

    /// Duplicates of an event_id within this window are dropped.
    #[arg(long, env = "ESTATE_DEDUP_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub dedup_window: Duration,

    /// Upper bound on dedup keys held per partition (oldest evicted first).
    #[arg(long, env = "ESTATE_DEDUP_MAX_KEYS", default_value_t = 2_000_000)]
    pub dedup_max_keys: usize,

    /// Largest accepted message, in bytes; larger ones go to the DLQ as `too_large`.
    #[arg(long, env = "ESTATE_MAX_MESSAGE_BYTES", default_value_t = 1_048_576)]
    pub max_message_bytes: usize,

    /// How far in the future an event time may be before `time_out_of_range`.
    #[arg(long, env = "ESTATE_MAX_FUTURE", default_value = "1d", value_parser = parse_duration)]
    pub max_future: Duration,

    /// Prometheus `/metrics` and `/healthz` listen address.
    #[arg(long, env = "ESTATE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// librdkafka setting passed through, e.g. `security.protocol=SASL_SSL` (repeatable).
    #[arg(long = "kafka-opt", env = "ESTATE_KAFKA_OPTS", value_parser = parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub kafka_opts: Vec<(String, String)>,

    /// librdkafka setting for the consumer only, applied after `--kafka-opt`,
    /// e.g. `fetch.wait.max.ms=20` (repeatable).
    #[arg(long = "consumer-opt", env = "ESTATE_CONSUMER_OPTS", value_parser = parse_kv, value_delimiter = ';')]
    pub consumer_opts: Vec<(String, String)>,

    /// Object store setting passed through, e.g. `aws_endpoint=http://127.0.0.1:9000` (repeatable).
    #[arg(long = "store-opt", env = "ESTATE_STORE_OPTS", value_parser = parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub store_opts: Vec<(String, String)>,

    /// Names the Kafka cluster in the per-partition offsets that every commit
    /// records. Leave empty for a normal cluster; set a new value only when the
    /// cluster is replaced by one whose offsets start again from zero (the
    /// in-memory broker of `estate standalone` gets a fresh one on each start).
    #[arg(long, env = "ESTATE_SOURCE_ID", default_value = "")]
    pub source_id: String,

    /// Also maintain the tables from this process: a compaction, retention
    /// and vacuum pass this often (the settings of `estate compact`, from its
    /// `ESTATE_*` variables or defaults). Run it in one ingest instance, or
    /// run `estate compact` beside them instead.
    #[arg(long, env = "ESTATE_INGEST_COMPACT_INTERVAL", value_parser = parse_duration)]
    pub compact_interval: Option<Duration>,

    /// TESTING ONLY: wrap the store in a fault injector, e.g. `fail=0.1,delay=50ms,delay_share=0.3`.
    #[arg(long, env = "ESTATE_TEST_INJECT_STORE_FAULTS")]
    pub test_inject_store_faults: Option<FaultSpec>,
}
