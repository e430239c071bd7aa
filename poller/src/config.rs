//! `estate poller` settings. Every setting is a long flag, an `ESTATE_*`
//! environment variable, and a key of the `[poller]` table of the optional
//! TOML file (`--config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::spool::FsyncPolicy;

/// Parses `KEY=VALUE`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
}

/// Parses a duration such as `1s`, `250ms`, `5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses a size: bytes, or with a `KiB`/`MiB`/`GiB` (or `K`/`M`/`G`) suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a size such as 512MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => return Err(format!("{s:?}: unknown unit {u:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?}: too large"))
}

/// Parses the fsync policy: `always`, `never`, or an interval such as `100ms`.
pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    match s {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        d => parse_duration(d).map(FsyncPolicy::Interval).map_err(|e| format!("expected always, never or an interval: {e}")),
    }
}

/// A listen address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

/// Parses a listen address; `off` disables the endpoint.
pub fn parse_addr(s: &str) -> Result<Listen, String> {
    if s == "off" || s.is_empty() {
        return Ok(Listen(None));
    }
    s.parse().map(|a| Listen(Some(a))).map_err(|e| format!("{s:?}: {e}"))
}

/// How spooled events are shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Real time: every event is sent as soon as it is durable in the spool.
    Stream,
    /// Scheduled sync: the spool is shipped in one compressed burst every
    /// `--sync-interval`, and nothing is sent in between.
    Batch,
}

/// Kafka compression codec (snappy is deliberately absent: not every
/// Kafka-protocol broker reads it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// LZ4: fast, the default.
    Lz4,
    /// Zstandard: smaller, for expensive links.
    Zstd,
}

impl Compression {
    /// The librdkafka `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Options of `estate poller`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["nmis_log", "json_lines"])))]
pub struct PollerArgs {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long, env = "ESTATE_BROKERS")]
    pub brokers: String,

    /// Tenant id stamped on every message and used as the Kafka key.
    #[arg(long, env = "ESTATE_TENANT")]
    pub tenant: String,

    /// This agent's poller id (unique per agent; mirror agents have their own).
    #[arg(long, env = "ESTATE_POLLER_ID")]
    pub poller_id: String,

    /// Spool directory (one per agent): segments, state file, lock.
    #[arg(long, env = "ESTATE_SPOOL_DIR")]
    pub spool_dir: PathBuf,

    /// Tail this NMIS `event.log` (survives rotation and restarts).
    #[arg(long, env = "ESTATE_NMIS_LOG")]
    pub nmis_log: Option<PathBuf>,

    /// Read wire-format JSON objects without the stamping fields, one per
    /// line, from this file (tailed like the NMIS log) or `-` for stdin
    /// (the agent drains its spool and exits at end of input).
    #[arg(long, env = "ESTATE_JSON_LINES")]
    pub json_lines: Option<String>,

    /// `stream` (real time) or `batch` (ship the spool every --sync-interval).
    #[arg(long, env = "ESTATE_MODE", value_enum, default_value = "stream")]
    pub mode: Mode,

    /// Batch mode: ship the spool this often.
    #[arg(long, env = "ESTATE_SYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub sync_interval: Duration,

    /// Send to `estate.events.<tenant>` instead of the shared topic.
    #[arg(long, env = "ESTATE_PER_TENANT_TOPIC")]
    pub per_tenant_topic: bool,

    /// Shared events topic (and prefix of the per-tenant topics).
    #[arg(long, env = "ESTATE_TOPIC", default_value = "estate.events")]
    pub topic: String,

    /// A heartbeat (last seq, spool depth, spool full) is spooled this often.
    #[arg(long, env = "ESTATE_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Kafka compression: lz4 or zstd.
    #[arg(long, env = "ESTATE_COMPRESSION", value_enum, default_value = "lz4")]
    pub compression: Compression,

    /// Spool size limit; at the limit the agent stops reading input until the
    /// broker acknowledges (backpressure). Nothing is ever dropped.
    #[arg(long, env = "ESTATE_SPOOL_MAX_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub spool_max_bytes: u64,

    /// Spool segment size (at most a quarter of --spool-max-bytes).
    #[arg(long, env = "ESTATE_SPOOL_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_size)]
    pub spool_segment_bytes: u64,

    /// When spooled records are fsync'd: `always` (before they can be sent),
    /// an interval such as `100ms` (group commit; records are sent once
    /// synced), or `never` (tmpfs; a power loss may lose the unsynced tail).
    #[arg(long, env = "ESTATE_SPOOL_FSYNC", default_value = "always", value_parser = parse_fsync)]
    pub spool_fsync: FsyncPolicy,

    /// How often the input file is checked for new lines and rotation.
    #[arg(long, env = "ESTATE_POLL_INTERVAL", default_value = "100ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Records sent but not yet acknowledged, at most.
    #[arg(long, env = "ESTATE_MAX_INFLIGHT", default_value_t = 20_000)]
    pub max_inflight: usize,

    /// On shutdown in stream mode, wait this long for the spool to drain.
    #[arg(long, env = "ESTATE_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Prometheus `/metrics` and `/healthz` listen address, or `off`.
    #[arg(long, env = "ESTATE_METRICS_ADDR", default_value = "127.0.0.1:9465", value_parser = parse_addr)]
    pub metrics_addr: Listen,

    /// librdkafka setting passed through, e.g. `security.protocol=SASL_SSL` (repeatable).
    #[arg(long = "kafka-opt", env = "ESTATE_KAFKA_OPTS", value_parser = parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub kafka_opts: Vec<(String, String)>,
}

impl PollerArgs {
    /// The topic this agent produces to.
    pub fn topic(&self) -> String {
        if self.per_tenant_topic { format!("{}.{}", self.topic, self.tenant) } else { self.topic.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_fsync_parse() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("1PB").is_err());
        assert_eq!(parse_fsync("always"), Ok(FsyncPolicy::Always));
        assert_eq!(parse_fsync("50ms"), Ok(FsyncPolicy::Interval(Duration::from_millis(50))));
        assert_eq!(parse_addr("off"), Ok(Listen(None)));
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: PollerArgs,
    }

    #[test]
    fn the_command_line_parses() {
        use clap::{CommandFactory, Parser};
        Cli::command().debug_assert();
        let c = Cli::try_parse_from([
            "p", "--brokers", "b:9092", "--tenant", "acme", "--poller-id", "p1", "--spool-dir", "/s",
            "--nmis-log", "/l", "--mode", "batch", "--sync-interval", "1m", "--spool-fsync", "10ms",
            "--metrics-addr", "off", "--kafka-opt", "a=b", "--compression", "zstd", "--spool-max-bytes", "2GiB",
        ])
        .unwrap();
        assert_eq!((c.args.mode, c.args.metrics_addr, c.args.spool_max_bytes), (Mode::Batch, Listen(None), 2 << 30));
        assert_eq!(c.args.topic(), "estate.events");
        assert!(Cli::try_parse_from(["p", "--brokers", "b", "--tenant", "a", "--poller-id", "p", "--spool-dir", "/s"]).is_err(), "an input is required");
    }
}
