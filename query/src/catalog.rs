//! The estate's Delta tables, kept current, and the per-principal file sets.
//!
//! A background task polls each table's log every `--refresh-interval` and
//! applies new commits incrementally (`update_incremental`), so the whole log
//! is never replayed per query. Each refresh publishes an immutable
//! [`Pinned`] snapshot; a query takes the four current snapshots once, at
//! session creation, and reads only those, so every query sees one
//! consistent version of each table.
//!
//! Tenancy is enforced here: when a snapshot is published, its active files
//! are grouped by their `tenant` partition value, and a tenant's table
//! provider is built with exactly that tenant's files, whichever read path
//! the version takes ([`crate::scan`] for tables as estate writes them,
//! delta-rs's scan with a `FileSelection` for any other).
//! Files of other tenants are never in the plan, the EXPLAIN output or any
//! error message of that session.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use deltalake::datafusion::catalog::TableProvider;
use deltalake::datafusion::execution::cache::cache_manager::FileMetadataCache;
use deltalake::datafusion::error::Result as DfResult;
use deltalake::delta_datafusion::{DeltaScanNext, FileSelection};
use deltalake::kernel::EagerSnapshot;
use deltalake::logstore::LogStoreRef;
use deltalake::{DeltaTable, ObjectStore};
use estate_ingest::{Store, TableKind};

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::scan::{DataFile, EstateTable, layout, reuse_index};

/// One published version of a table.
#[derive(Debug)]
pub struct Pinned {
    /// Delta table version.
    pub version: i64,
    kind: TableKind,
    /// Active files in the table.
    pub files: usize,
    read: ReadPath,
}

/// How a pinned version is read.
#[derive(Debug)]
enum ReadPath {
    /// A table as estate writes it: its files, with their statistics, go to
    /// DataFusion's Parquet source ([`crate::scan`]).
    Direct {
        store: Arc<dyn ObjectStore>,
        /// Every active file.
        all: Vec<Arc<DataFile>>,
        /// Active files per tenant.
        by_tenant: HashMap<String, Vec<Arc<DataFile>>>,
    },
    /// Any other table (a Delta feature estate does not write, such as
    /// deletion vectors or column mapping, enabled by another tool): read
    /// through delta-rs's own DataFusion scan, which supports them, with the
    /// same per-tenant file lists.
    DeltaRs {
        snapshot: Arc<EagerSnapshot>,
        log_store: LogStoreRef,
        /// Active file paths (relative to the table root) per tenant.
        by_tenant: HashMap<String, Vec<String>>,
    },
}

impl Pinned {
    /// Active files a principal may read.
    pub fn visible_files(&self, principal: &Principal) -> usize {
        let Principal::Tenant(t) = principal else { return self.files };
        match &self.read {
            ReadPath::Direct { by_tenant, .. } => by_tenant.get(t).map_or(0, Vec::len),
            ReadPath::DeltaRs { by_tenant, .. } => by_tenant.get(t).map_or(0, Vec::len),
        }
    }
}

#[derive(Debug)]
struct Slot {
    kind: TableKind,
    table: tokio::sync::Mutex<DeltaTable>,
    current: RwLock<Option<Arc<Pinned>>>,
}

/// The four tables of the estate.
pub struct Catalog {
    store: Store,
    slots: Vec<Slot>,
    /// The service's Parquet footer cache, which a refresh rids of the
    /// files a new version no longer has (see [`Catalog::set_footer_cache`]).
    footers: OnceLock<Arc<FileMetadataCache>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("store", &self.store).field("slots", &self.slots).finish_non_exhaustive()
    }
}

/// The snapshots one query reads.
#[derive(Debug, Clone)]
pub struct Snapshots {
    tables: Vec<(TableKind, Option<Arc<Pinned>>)>,
}

impl Snapshots {
    /// The pinned version of a table, `None` while it does not exist yet.
    pub fn get(&self, kind: TableKind) -> Option<&Arc<Pinned>> {
        self.tables.iter().find(|(k, _)| *k == kind).and_then(|(_, p)| p.as_ref())
    }

    /// Files a principal may read, over all tables.
    pub fn visible_files(&self, principal: &Principal) -> usize {
        self.tables.iter().filter_map(|(_, p)| p.as_ref()).map(|p| p.visible_files(principal)).sum()
    }
}

impl Catalog {
    /// Opens the tables that exist; the others are picked up once ingest
    /// creates them.
    pub async fn open(store: Store) -> Result<Arc<Catalog>> {
        let mut slots = Vec::with_capacity(TableKind::ALL.len());
        for kind in TableKind::ALL {
            let table = store.table(kind.name()).map_err(|e| Error::Config(e.to_string()))?;
            slots.push(Slot { kind, table: tokio::sync::Mutex::new(table), current: RwLock::new(None) });
        }
        let catalog = Arc::new(Catalog { store, slots, footers: OnceLock::new() });
        catalog.refresh().await;
        Ok(catalog)
    }

    /// Hands the catalog the footer cache that queries fill. From then on,
    /// when a refresh publishes a version without some files of the one
    /// before (compaction, retention), their footers leave the cache at
    /// once. Without this, footers of files that no query can open again
    /// stayed until the LRU bound pushed them out, so the cache grew to its
    /// bound over the first quarter hour of a run and RSS with it (a soak
    /// with the cache off was flat from minute 8: docs/reliability.md).
    /// Footers of versions read through `as_of` are still bounded by the
    /// LRU only. A second call is ignored.
    pub fn set_footer_cache(&self, cache: Arc<FileMetadataCache>) {
        let _ = self.footers.set(cache);
    }

    /// The store root URL, as text (redacted from error messages).
    pub fn root(&self) -> &str {
        self.store.url().as_str()
    }

    /// Applies new commits of every table. Errors are logged and retried on
    /// the next round; readers keep the last good snapshot meanwhile.
    pub async fn refresh(&self) {
        for slot in &self.slots {
            if let Err(e) = self.refresh_one(slot).await {
                tracing::warn!(table = slot.kind.name(), error = %e, "refreshing table failed; serving the last snapshot");
            }
        }
    }

    async fn refresh_one(&self, slot: &Slot) -> Result<()> {
        let mut table = slot.table.lock().await;
        let before = table.version();
        match table.update_incremental(None).await {
            Ok(()) => {}
            Err(deltalake::DeltaTableError::NotATable(_)) => return Ok(()),
            Err(e) => {
                // A table whose log does not exist yet is not an error.
                if before.is_none() && e.to_string().contains("Not a Delta table") {
                    return Ok(());
                }
                return Err(Error::Store { url: self.store.table_url(slot.kind.name()).to_string(), source: e });
            }
        }
        let Some(version) = table.version() else { return Ok(()) };
        if before == Some(version) && slot.current.read().expect("catalog lock").is_some() {
            return Ok(());
        }
        let previous = slot.current.read().expect("catalog lock").clone();
        let pinned = self.pin(slot.kind, &table, version, previous.as_deref())?;
        if let (Some(cache), Some(before)) = (self.footers.get(), previous.as_deref()) {
            evict_gone(cache.as_ref(), before, &pinned);
        }
        let files = pinned.files;
        tracing::debug!(table = slot.kind.name(), version, files, "snapshot published");
        *slot.current.write().expect("catalog lock") = Some(Arc::new(pinned));
        Ok(())
    }

    /// Publishes a loaded table version: its files, per tenant, with their
    /// statistics. Files already known from `previous` are not parsed again.
    fn pin(&self, kind: TableKind, table: &DeltaTable, version: u64, previous: Option<&Pinned>) -> Result<Pinned> {
        let state = table.snapshot().map_err(|source| Error::Store { url: self.store.table_url(kind.name()).to_string(), source })?;
        let layout = layout(kind);
        let version = version as i64;
        let through_delta_rs = |why: String| {
            tracing::warn!(table = kind.name(), version, reason = %why, "not a table as estate writes it; reading it through delta-rs's scan");
            let mut by_tenant: HashMap<String, Vec<String>> = HashMap::new();
            let mut files = 0;
            for f in state.log_data().iter() {
                files += 1;
                let tenant = f.partition_values_map().remove("tenant").flatten().unwrap_or_default();
                by_tenant.entry(tenant).or_default().push(f.path().into_owned());
            }
            let read = ReadPath::DeltaRs { snapshot: Arc::new(state.snapshot().clone()), log_store: table.log_store(), by_tenant };
            Ok(Pinned { version, kind, files, read })
        };
        let protocol = serde_json::to_value(state.protocol()).unwrap_or_default();
        let metadata = serde_json::to_value(state.metadata()).unwrap_or_default();
        if let Err(why) = layout.check_table(&protocol, &metadata) {
            return through_delta_rs(why);
        }
        let known = match previous.map(|p| &p.read) {
            Some(ReadPath::Direct { all, .. }) => reuse_index(all),
            _ => HashMap::new(),
        };
        let mut all = Vec::new();
        let mut by_tenant: HashMap<String, Vec<Arc<DataFile>>> = HashMap::new();
        for f in state.log_data().iter() {
            let file = match DataFile::reuse(&layout, &f, &known) {
                Ok(file) => file,
                Err(why) => return through_delta_rs(why),
            };
            by_tenant.entry(file.tenant.clone()).or_default().push(file.clone());
            all.push(file);
        }
        let files = all.len();
        let read = ReadPath::Direct { store: table.log_store().object_store(None), all, by_tenant };
        Ok(Pinned { version, kind, files, read })
    }

    /// The snapshots of every table as they were at `as_of`: the last version
    /// committed at or before that time (a table that did not exist then reads
    /// as empty). A version number names an `events` version; the other tables
    /// are taken as of that version's commit time. Tenant scoping applies
    /// exactly as to current snapshots.
    pub async fn snapshots_as_of(&self, as_of: &AsOf) -> Result<Snapshots> {
        let at = match as_of {
            AsOf::Time(t) => *t,
            AsOf::Version(v) => self.events_commit_time(*v).await?,
        };
        let mut tables = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let mut table = self.store.table(slot.kind.name()).map_err(|e| Error::Config(e.to_string()))?;
            if let (AsOf::Version(v), TableKind::Events) = (as_of, slot.kind) {
                // Exactly the version asked for, whatever commit times say.
                table.load_version(*v as u64).await.map_err(|e| self.as_of_error(slot.kind, e))?;
                tables.push((slot.kind, Some(Arc::new(self.pin(slot.kind, &table, *v as u64, None)?))));
                continue;
            }
            let pinned = match table.load_with_datetime(at).await {
                Ok(()) => {
                    let v = table.version().unwrap_or(0);
                    Some(Arc::new(self.pin(slot.kind, &table, v, None)?))
                }
                Err(e) if is_before_history(&e) => None,
                Err(e) => return Err(self.as_of_error(slot.kind, e)),
            };
            tables.push((slot.kind, pinned));
        }
        Ok(Snapshots { tables })
    }

    async fn events_commit_time(&self, version: i64) -> Result<chrono::DateTime<chrono::Utc>> {
        let version = u64::try_from(version).map_err(|_| Error::BadSql("as_of: a version is a non-negative integer".into()))?;
        let mut table = self.store.table(TableKind::Events.name()).map_err(|e| Error::Config(e.to_string()))?;
        table.load_version(version).await.map_err(|e| self.as_of_error(TableKind::Events, e))?;
        let latest = {
            use futures::StreamExt as _;
            let mut history = table.history(Some(1));
            history.next().await
        };
        let ts = latest
            .transpose()
            .map_err(|e| self.as_of_error(TableKind::Events, e))?
            .and_then(|c| c.timestamp)
            .ok_or_else(|| Error::BadSql(format!("as_of: events version {version} has no commit time")))?;
        chrono::DateTime::from_timestamp_millis(ts).ok_or_else(|| Error::BadSql("as_of: bad commit time".into()))
    }

    fn as_of_error(&self, kind: TableKind, e: deltalake::DeltaTableError) -> Error {
        let msg = crate::error::redact(&e.to_string(), self.root());
        Error::BadSql(format!("as_of: {} cannot be read at that point ({msg}); time travel reaches back as far as the compactor's --vacuum-retention", kind.name()))
    }
}

/// A point in the table history a query reads, for postmortems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    /// An `events` table version.
    Version(i64),
    /// A point in time.
    Time(chrono::DateTime<chrono::Utc>),
}

impl AsOf {
    /// Parses `2026-11-24T10:00:00Z` (RFC 3339) or a version number.
    pub fn parse(s: &str) -> Result<AsOf> {
        let s = s.trim();
        if let Ok(v) = s.parse::<i64>() {
            return Ok(AsOf::Version(v));
        }
        chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| AsOf::Time(t.with_timezone(&chrono::Utc)))
            .map_err(|e| Error::BadSql(format!("as_of {s:?}: expected an RFC 3339 time such as 2026-11-24T10:00:00Z or an events version number: {e}")))
    }
}

/// Whether loading "as of" failed only because the table is younger.
fn is_before_history(e: &deltalake::DeltaTableError) -> bool {
    let m = e.to_string();
    matches!(e, deltalake::DeltaTableError::NotATable(_)) || m.contains("Not a Delta table") || m.contains("earliest")
        || m.contains("before the first")
}

impl Catalog {
    /// Polls for new commits until the task is dropped.
    pub async fn refresh_loop(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh().await;
        }
    }

    /// The current snapshot of every table.
    pub fn snapshots(&self) -> Snapshots {
        Snapshots {
            tables: self
                .slots
                .iter()
                .map(|s| (s.kind, s.current.read().expect("catalog lock").clone()))
                .collect(),
        }
    }
}

/// Drops from `cache` the footers of files `before` had and `now` has not.
fn evict_gone(cache: &FileMetadataCache, before: &Pinned, now: &Pinned) {
    let (ReadPath::Direct { all: old, .. }, ReadPath::Direct { all: new, .. }) = (&before.read, &now.read) else { return };
    let kept: HashSet<&str> = new.iter().map(|f| f.path.as_str()).collect();
    for f in old.iter().filter(|f| !kept.contains(f.path.as_str())) {
        cache.remove(f.location());
    }
}

/// Builds the table provider a principal reads: the pinned version,
/// restricted to the principal's files; an empty table with the same
/// columns when the table does not exist yet.
pub async fn provider(
    kind: TableKind,
    pinned: Option<&Arc<Pinned>>,
    principal: &Principal,
) -> DfResult<Arc<dyn TableProvider>> {
    let Some(p) = pinned else {
        return Ok(Arc::new(EstateTable::new(layout(kind), None, Vec::new())));
    };
    match &p.read {
        ReadPath::Direct { store, all, by_tenant } => {
            let files = match principal {
                Principal::Operator => all.clone(),
                Principal::Tenant(t) => by_tenant.get(t).cloned().unwrap_or_default(),
            };
            Ok(Arc::new(EstateTable::new(layout(p.kind), Some(store.clone()), files)))
        }
        ReadPath::DeltaRs { snapshot, log_store, by_tenant } => {
            let mut builder =
                DeltaScanNext::builder().with_log_store(log_store.clone()).with_eager_snapshot(snapshot.clone());
            if let Principal::Tenant(t) = principal {
                let paths = by_tenant.get(t).cloned().unwrap_or_default();
                builder = builder.with_file_selection(FileSelection::from_file_paths(paths));
            }
            Ok(Arc::new(builder.build().await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::any::Any;

    use deltalake::datafusion::common::HashMap as DfHashMap;
    use deltalake::datafusion::execution::cache::Cache as _;
    use deltalake::datafusion::execution::cache::cache_manager::{CachedFileMetadataEntry, FileMetadata};
    use deltalake::datafusion::execution::cache::default_cache::DefaultCache;

    use super::*;
    use crate::scan::tests::file;

    struct Footer;

    impl FileMetadata for Footer {
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn memory_size(&self) -> usize {
            100
        }
        fn extra_info(&self) -> DfHashMap<String, String> {
            DfHashMap::new()
        }
    }

    fn pinned(files: &[Arc<DataFile>]) -> Pinned {
        let store: Arc<dyn ObjectStore> = Arc::new(deltalake::logstore::object_store::memory::InMemory::new());
        Pinned { version: 1, kind: TableKind::Events, files: files.len(), read: ReadPath::Direct { store, all: files.to_vec(), by_tenant: HashMap::new() } }
    }

    #[test]
    fn a_new_version_drops_the_footers_of_files_it_no_longer_has() {
        let cache = DefaultCache::new(1 << 20);
        let (a, b, c) = (file("t", None, None), file("t", None, None), file("t", None, None));
        for f in [&a, &b, &c] {
            let meta = deltalake::ObjectMeta { location: f.location().clone(), last_modified: Default::default(), size: 1000, e_tag: None, version: None };
            cache.put(f.location(), CachedFileMetadataEntry::new(meta, Arc::new(Footer)));
        }
        // Compaction: a and b replaced by d.
        let d = file("t", None, None);
        evict_gone(&cache, &pinned(&[a.clone(), b.clone(), c.clone()]), &pinned(&[c.clone(), d]));
        assert!(!cache.contains_key(a.location()));
        assert!(!cache.contains_key(b.location()));
        assert!(cache.contains_key(c.location()), "a file the new version still has keeps its footer");
        assert_eq!(cache.len(), 1);
    }
}
