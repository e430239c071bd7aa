//! Per-query DataFusion sessions, scoped to one principal.
//!
//! Each query gets a fresh `SessionContext` with its own memory pool (the
//! per-query limit, spilling to disk where operators support it) and with
//! the base tables bound to the snapshots pinned for that query, restricted
//! to the principal's files (see [`crate::catalog`]). Views are planned in
//! the same session, so they inherit the restriction.
//!
//! Planning a view's SQL costs about 1 ms, and four of them were most of a
//! small query's time (`SELECT 1` took 4.1 ms in the server, 3.9 ms of it in
//! the views). A session for one statement plans only the views that
//! statement names; one that reads `information_schema` (or any other
//! schema) gets all of them, since it may list their definitions.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use deltalake::datafusion::catalog::view::ViewTable;
use deltalake::datafusion::common::TableReference;
use deltalake::datafusion::error::Result as DfResult;
use deltalake::datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache};
use deltalake::datafusion::execution::cache::default_cache::DefaultCache;
use deltalake::datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use deltalake::datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use deltalake::datafusion::execution::session_state::SessionStateBuilder;
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::datafusion::sql::parser::Statement as DfStatement;
use estate_ingest::TableKind;

use crate::auth::Principal;
use crate::catalog::{Snapshots, provider};
use crate::views::{PollerThresholds, views};

/// The catalog and schema names sessions use.
pub const CATALOG: &str = "estate";
/// The schema of the estate tables.
pub const SCHEMA: &str = "public";

/// The SQL name of each base table.
pub fn base_table_name(kind: TableKind) -> &'static str {
    match kind {
        TableKind::Nodes => "node_snapshots",
        other => other.name(),
    }
}

/// Builds sessions.
#[derive(Clone)]
pub struct SessionFactory {
    threads: usize,
    memory: usize,
    spill_dir: Option<PathBuf>,
    views: Vec<(&'static str, String)>,
    footers: Arc<FileMetadataCache>,
}

impl std::fmt::Debug for SessionFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionFactory")
            .field("threads", &self.threads)
            .field("memory", &self.memory)
            .field("spill_dir", &self.spill_dir)
            .field("footers_cached", &self.footers.len())
            .finish_non_exhaustive()
    }
}

/// The default bound of the Parquet footer (file metadata) cache kept
/// across queries, in bytes (`--footer-cache`).
///
/// Each query has its own runtime (for its memory pool), so without a shared
/// cache every query read the footer of every file it opened again. Data
/// files never change once committed (a rewrite gets a new name), so a
/// cached footer cannot go stale; least recently used ones are dropped at
/// the limit. A small file's footer takes a few KiB. The bound is small on
/// purpose: a busy estate fills it within minutes and it then stays flat, so
/// it cannot pass for a leak in a long run's memory curve.
pub const FOOTER_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Memory each sort sets aside up front for merging what it spilled.
///
/// DataFusion's default is 10 MiB per sort per partition. A plan may sort
/// more than once (the window of `nodes`, then a query's ORDER BY), so on 2
/// threads `active_events` in its window form held 40 MiB of these
/// reservations before reading a row, and failed outright under a 24 MiB
/// limit. An eighth of the query's memory per thread, shared by the sorts a
/// plan runs at once, keeps small limits usable; at the 512 MiB default it
/// stays at DataFusion's 10 MiB.
fn sort_reservation(memory: usize, threads: usize) -> usize {
    const DATAFUSION_DEFAULT: usize = 10 * 1024 * 1024;
    (memory / (8 * threads.max(1))).min(DATAFUSION_DEFAULT)
}

impl SessionFactory {
    /// A factory for sessions with these limits.
    pub fn new(
        threads: usize,
        memory: usize,
        footer_cache: usize,
        spill_dir: Option<PathBuf>,
        thresholds: PollerThresholds,
    ) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, NonZeroUsize::get)
        } else {
            threads
        };
        let footers: Arc<FileMetadataCache> =
            Arc::new(DefaultCache::new(footer_cache).with_name("parquet footers"));
        SessionFactory { threads, memory, spill_dir, views: views(thresholds), footers }
    }

    /// The Parquet footer cache the sessions share.
    pub fn footer_cache(&self) -> Arc<FileMetadataCache> {
        self.footers.clone()
    }

    /// Threads per query.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// A session that reads `snapshots` as `principal`, with every view.
    pub async fn session(&self, principal: &Principal, snapshots: &Snapshots) -> DfResult<SessionContext> {
        self.build(principal, snapshots, None).await
    }

    /// A session for planning `statement`: like [`SessionFactory::session`],
    /// with only the views the statement names.
    pub async fn session_for(
        &self,
        principal: &Principal,
        snapshots: &Snapshots,
        statement: &DfStatement,
    ) -> DfResult<SessionContext> {
        self.build(principal, snapshots, Some(statement)).await
    }

    async fn build(
        &self,
        principal: &Principal,
        snapshots: &Snapshots,
        statement: Option<&DfStatement>,
    ) -> DfResult<SessionContext> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(self.threads)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(true);
        // DataFusion 55 fails `SELECT DISTINCT x FROM <view> … LIMIT n` (our
        // row limit is always appended) with "Ordering direction required
        // for DISTINCT with limit": the distinct soft-limit rule hands the
        // aggregate to the top-k stream. Found by the scenario runner's
        // isolation probes; the isolation suite has the regression case.
        let mut config = config;
        config.options_mut().optimizer.enable_distinct_aggregation_soft_limit = false;
        config.options_mut().execution.sort_spill_reservation_bytes = sort_reservation(self.memory, self.threads);
        // DataFusion only re-splits a scan's file groups across threads
        // above 10 MiB. Measured when delta-rs's scan put every file in one
        // group: the side tables' few-KiB files were read one after another,
        // and splitting them took queries 06 and 08 from 23 to 15 ms
        // (2M-event bench store). estate's own scan groups files per thread
        // (crate::scan) and a table estate did not write may still take
        // delta-rs's path, so the minimum stays at 0.
        config.options_mut().optimizer.repartition_file_min_size = 0;
        let pool = TrackConsumersPool::new(FairSpillPool::new(self.memory), NonZeroUsize::new(3).expect("3 > 0"));
        let disk = match &self.spill_dir {
            Some(dir) => DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![dir.clone()])),
            None => DiskManagerBuilder::default().with_mode(DiskManagerMode::OsTmpDirectory),
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_disk_manager_builder(disk)
            .with_cache_manager(
                CacheManagerConfig::default()
                    .with_file_metadata_cache(Some(self.footers.clone()))
                    .with_metadata_cache_limit(self.footers.cache_limit()),
            )
            .build_arc()?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        for kind in TableKind::ALL {
            let table = provider(kind, snapshots.get(kind), principal).await?;
            ctx.register_table(base_table_name(kind), table)?;
        }
        // Views read only base tables (a unit test checks it), so the names
        // in the statement are all the views it needs.
        let named = match statement {
            None => None,
            Some(st) => {
                let refs = ctx.state().resolve_table_references(st)?;
                let ours = |r: &TableReference| {
                    r.schema().is_none_or(|s| s == SCHEMA) && r.catalog().is_none_or(|c| c == CATALOG)
                };
                refs.iter().all(ours).then(|| refs.iter().map(|r| r.table().to_owned()).collect::<Vec<_>>())
            }
        };
        for (name, sql) in &self.views {
            if named.as_ref().is_some_and(|n| !n.iter().any(|t| t == name)) {
                continue;
            }
            let plan = ctx.state().create_logical_plan(sql).await?;
            ctx.register_table(*name, Arc::new(ViewTable::new(plan, Some(sql.clone()))))?;
        }
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use deltalake::datafusion::prelude::SessionContext;
    use deltalake::datafusion::sql::parser::DFParser;
    use estate_ingest::TableKind;

    use super::{base_table_name, sort_reservation};
    use crate::views::{PollerThresholds, views};

    /// A session for one statement plans only the views it names, which is
    /// complete only while no view reads another view.
    #[test]
    fn views_read_only_base_tables() {
        let thresholds = PollerThresholds { late_after: Duration::from_secs(60), down_after: Duration::from_secs(300) };
        let bases: Vec<&str> = TableKind::ALL.iter().map(|k| base_table_name(*k)).collect();
        let state = SessionContext::new().state();
        for (name, sql) in views(thresholds) {
            let statement = DFParser::parse_sql(&sql).unwrap().pop_front().unwrap();
            let refs = state.resolve_table_references(&statement).unwrap();
            assert!(!refs.is_empty(), "{name}");
            for r in refs {
                assert!(bases.contains(&r.table()), "view {name} reads {r}, which is not a base table");
            }
        }
    }

    #[test]
    fn sort_reservation_scales_with_the_limit() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(sort_reservation(512 * MIB, 2), 10 * MIB);
        assert_eq!(sort_reservation(24 * MIB, 2), 3 * MIB / 2);
        assert_eq!(sort_reservation(24 * MIB, 0), 3 * MIB);
    }
}
