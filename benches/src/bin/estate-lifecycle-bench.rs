//! Storage lifecycle benchmark (issue 7): simulated streaming ingest (many
//! small commits), then one compaction pass on one core, with file counts,
//! compaction throughput, cold table-load times and the standard queries'
//! p50 before and after.
//!
//! `estate-lifecycle-bench --store DIR --commits 3600 --rows-per-commit 20000`
//! simulates an hour of ingest at 20k events/s with a 1 s flush.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use estate_ingest::lifecycle::{CompactArgs, Compactor};
use estate_query::auth::Principal;
use estate_query::engine::{Engine, Limits};

/// Simulate streaming ingest, then compact, and measure.
#[derive(Debug, Parser)]
struct Args {
    /// Store root (a new directory).
    #[arg(long)]
    store: String,
    /// Flushes to simulate (one commit per table each).
    #[arg(long, default_value_t = 3600)]
    commits: usize,
    /// Events per flush.
    #[arg(long, default_value_t = 20_000)]
    rows_per_commit: usize,
    /// Tenants.
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Runs of each standard query (p50 reported).
    #[arg(long, default_value_t = 5)]
    query_runs: usize,
    /// Directory of the standard queries.
    #[arg(long, default_value = "query/queries")]
    queries: std::path::PathBuf,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let store = estate_ingest::Store::open(&a.store, Default::default(), None)?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let spec = estate_benches::dataset::Spec {
        tenants: a.tenants,
        pollers: 4,
        nodes: 2000,
        events: a.commits * a.rows_per_commit,
        commit_rows: a.rows_per_commit,
        span_hours: 1,
        now_ms,
        seed: 7,
    };
    let t = Instant::now();
    let s = estate_benches::dataset::generate(&store, &spec).await?;
    println!("simulated ingest: {} events in {} flushes, {:.1} s", s.events, s.commits, t.elapsed().as_secs_f64());

    let before = files_per_tenant_day(&store).await?;
    let load_before = cold_load(&store).await?;
    eprintln!("standard queries before compaction");
    let q_before = standard_queries(&a, &store).await?;

    let args = CompactArgs {
        store: a.store.clone(),
        store_opts: Vec::new(),
        target_size: 128 << 20,
        min_files: 2,
        retention: Duration::ZERO,
        retention_file: None,
        vacuum_retention: Duration::from_secs(7 * 86_400),
        checkpoint_every: 100,
        interval: None,
    };
    let compactor = Compactor::new(args)?;
    eprintln!("compacting");
    let t = Instant::now();
    let report = compactor.pass().await?;
    let secs = t.elapsed().as_secs_f64();
    let after = files_per_tenant_day(&store).await?;
    let load_after = cold_load(&store).await?;
    eprintln!("standard queries after compaction");
    let q_after = standard_queries(&a, &store).await?;

    let avg = |m: &BTreeMap<(String, String), usize>| m.values().sum::<usize>() as f64 / m.len().max(1) as f64;
    println!("events files per tenant-day: before avg {:.0} (max {}), after avg {:.1} (max {})",
        avg(&before), before.values().max().unwrap_or(&0), avg(&after), after.values().max().unwrap_or(&0));
    println!(
        "compaction pass (one task at a time): {:.1} s, {} partitions, {:.1} MB rewritten, {:.1} MB/s",
        secs,
        report.partitions_compacted,
        report.bytes_rewritten as f64 / 1e6,
        report.bytes_rewritten as f64 / 1e6 / secs
    );
    println!("cold load of all four tables: before {:.0} ms, after compaction + checkpoint {:.0} ms", load_before * 1e3, load_after * 1e3);
    println!("standard query p50 (ms), before -> after compaction:");
    for ((name, b), (_, f)) in q_before.iter().zip(&q_after) {
        println!("  {name:<36} {:>8.1} -> {:>8.1}  ({:.2}x)", b * 1e3, f * 1e3, b / f);
    }
    Ok(())
}

async fn files_per_tenant_day(store: &estate_ingest::Store) -> anyhow::Result<BTreeMap<(String, String), usize>> {
    let mut table = store.table("events")?;
    table.load().await?;
    let mut out = BTreeMap::new();
    for f in table.snapshot()?.log_data().iter() {
        let mut pv = f.partition_values_map();
        let tenant = pv.remove("tenant").flatten().unwrap_or_default();
        let date = pv.remove("date").flatten().unwrap_or_default();
        *out.entry((tenant, date)).or_insert(0) += 1;
    }
    Ok(out)
}

/// Seconds to load the four tables from scratch, as a query service starts.
async fn cold_load(store: &estate_ingest::Store) -> anyhow::Result<f64> {
    let t = Instant::now();
    let catalog = estate_query::catalog::Catalog::open(store.clone()).await?;
    let secs = t.elapsed().as_secs_f64();
    drop(catalog);
    Ok(secs)
}

async fn standard_queries(a: &Args, store: &estate_ingest::Store) -> anyhow::Result<Vec<(String, f64)>> {
    let catalog = estate_query::catalog::Catalog::open(store.clone()).await?;
    let sessions = estate_query::session::SessionFactory::new(
        0,
        2 << 30,
        estate_query::session::FOOTER_CACHE_BYTES,
        None,
        estate_query::views::PollerThresholds { late_after: Duration::from_secs(30), down_after: Duration::from_secs(120) },
    );
    let limits = Limits { timeout: Duration::from_secs(600), max_rows: 10_000_000, per_tenant: 4, queue_timeout: Duration::from_secs(60) };
    let engine = Engine::new(catalog, sessions, limits, Arc::new(estate_query::Metrics::default()));
    let mut files: Vec<_> = std::fs::read_dir(&a.queries)?.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "sql")) {
        let sql = std::fs::read_to_string(f)?;
        let name = f.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let mut times = Vec::new();
        for _ in 0..a.query_runs {
            let t = Instant::now();
            // A failed query is reported (as NaN) rather than ending a run
            // that took an hour to set up.
            match engine.execute(&Principal::Operator, &sql, "bench").await {
                Ok(_) => times.push(t.elapsed().as_secs_f64()),
                Err(e) => {
                    eprintln!("  {name}: failed after {:.1} s: {e}", t.elapsed().as_secs_f64());
                    times.push(f64::NAN);
                }
            }
        }
        times.sort_by(f64::total_cmp);
        let p50 = times[times.len() / 2];
        eprintln!("  {name}: p50 {:.1} ms", p50 * 1e3);
        out.push((name, p50));
    }
    Ok(out)
}
