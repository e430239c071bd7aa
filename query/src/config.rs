//! `estate query` settings. Every setting is a long flag, an `ESTATE_*`
//! environment variable, and a key of the optional TOML file (`--config`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use estate_ingest::{parse_duration, parse_kv};

pub use estate_ingest::parse_bytes;

/// Options of `estate query`.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryArgs {
    /// Store root with the Delta tables: `file:///abs/path`, a local path, `s3://bucket/prefix`.
    #[arg(long, env = "ESTATE_STORE")]
    pub store: String,

    /// Object store setting passed through, e.g. `aws_endpoint=http://127.0.0.1:9000` (repeatable).
    #[arg(long = "store-opt", env = "ESTATE_STORE_OPTS", value_parser = parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub store_opts: Vec<(String, String)>,

    /// HTTP listen address (`POST /v1/sql`, `/healthz`, `/metrics`).
    #[arg(long, env = "ESTATE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Arrow Flight SQL listen address.
    #[arg(long, env = "ESTATE_FLIGHT_ADDR", default_value = "127.0.0.1:50051")]
    pub flight_addr: SocketAddr,

    /// Token file (TOML, `[[token]]` entries with `token` and `tenant` or `role = "operator"`).
    /// Reloaded on SIGHUP.
    #[arg(long, env = "ESTATE_AUTH_FILE")]
    pub auth_file: PathBuf,

    /// Memory one query may use before it spills to disk or fails.
    #[arg(long, env = "ESTATE_QUERY_MEMORY", default_value = "512MiB", value_parser = parse_bytes)]
    pub query_memory: usize,

    /// Parquet footers kept across queries (one LRU cache for the service);
    /// 0 turns the cache off.
    #[arg(long, env = "ESTATE_FOOTER_CACHE", default_value = "16MiB", value_parser = parse_bytes)]
    pub footer_cache: usize,

    /// A query running longer than this is cancelled (HTTP 408).
    #[arg(long, env = "ESTATE_QUERY_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub query_timeout: Duration,

    /// Most rows one answer may carry (HTTP 413 beyond).
    #[arg(long, env = "ESTATE_MAX_ROWS", default_value_t = 1_000_000)]
    pub max_rows: usize,

    /// Queries one tenant (or the operators together) may run at once; more wait.
    #[arg(long, env = "ESTATE_MAX_CONCURRENT_PER_TENANT", default_value_t = 4)]
    pub max_concurrent_per_tenant: usize,

    /// How long a query waits for a concurrency slot before it is refused (HTTP 429).
    #[arg(long, env = "ESTATE_QUEUE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// How often the Delta logs are polled for new commits.
    #[arg(long, env = "ESTATE_REFRESH_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub refresh_interval: Duration,

    /// Threads (DataFusion target partitions) per query; 0 = the number of cores.
    #[arg(long, env = "ESTATE_QUERY_THREADS", default_value_t = 0)]
    pub query_threads: usize,

    /// A poller whose last heartbeat is older than this is `late`.
    #[arg(long, env = "ESTATE_POLLER_LATE_AFTER", default_value = "30s", value_parser = parse_duration)]
    pub poller_late_after: Duration,

    /// A poller whose last heartbeat is older than this (or that never sent one) is `down`.
    #[arg(long, env = "ESTATE_POLLER_DOWN_AFTER", default_value = "2m", value_parser = parse_duration)]
    pub poller_down_after: Duration,

    /// Directory for query spill files (default: the system temp directory).
    #[arg(long, env = "ESTATE_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("12 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_bytes("MiB").is_err());
    }

    #[test]
    fn footer_cache_default_is_the_documented_bound() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: super::QueryArgs,
        }
        let cli = Cli::try_parse_from(["query", "--store", "/tmp/s", "--auth-file", "/tmp/t.toml"]).unwrap();
        assert_eq!(cli.args.footer_cache, crate::session::FOOTER_CACHE_BYTES);
        let cli = Cli::try_parse_from(["query", "--store", "/tmp/s", "--auth-file", "/tmp/t.toml", "--footer-cache", "0"]).unwrap();
        assert_eq!(cli.args.footer_cache, 0);
    }
}
