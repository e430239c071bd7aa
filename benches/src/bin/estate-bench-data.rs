//! Writes a simulated estate to a store, for the query benchmark.
//!
//! `estate-bench-data --store DIR --events 10000000`

use clap::Parser;

/// Generate a benchmark data set in the production layout.
#[derive(Debug, Parser)]
struct Args {
    /// Store root (directory or URL).
    #[arg(long)]
    store: String,
    /// Events in all.
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// Tenants.
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Pollers per tenant.
    #[arg(long, default_value_t = 4)]
    pollers: usize,
    /// Nodes per tenant.
    #[arg(long, default_value_t = 2000)]
    nodes: usize,
    /// Events per commit.
    #[arg(long, default_value_t = 500_000)]
    commit_rows: usize,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let store = estate_ingest::Store::open(&a.store, Default::default(), None)?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let spec = estate_benches::dataset::Spec {
        tenants: a.tenants,
        pollers: a.pollers,
        nodes: a.nodes,
        events: a.events,
        commit_rows: a.commit_rows,
        span_hours: 23,
        now_ms,
        seed: 42,
    };
    let t = std::time::Instant::now();
    let s = estate_benches::dataset::generate(&store, &spec).await?;
    eprintln!("wrote {} events in {} commits in {:.1}s", s.events, s.commits, t.elapsed().as_secs_f64());
    Ok(())
}
