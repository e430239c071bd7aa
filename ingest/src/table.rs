//! One Delta table as ingest writes it: Parquet files plus one commit per
//! flush that carries an application transaction per Kafka partition, behind
//! the zombie fence described in `ARCHITECTURE.md`.

use std::collections::HashMap;
use std::time::Duration;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitProperties, TransactionError,
};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use estate_schemas::PARTITION_COLUMNS;

use crate::error::{Error, Result};
use crate::store::Store;

/// The four tables ingest writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// NMIS events.
    Events,
    /// Node snapshots.
    Nodes,
    /// Poller heartbeats.
    Heartbeats,
    /// Seq receipts for the loss audit.
    Receipts,
}

impl TableKind {
    /// All tables, in commit order. `receipts` goes last: a receipt never
    /// claims a message whose row is not yet committed.
    pub const ALL: [TableKind; 4] =
        [TableKind::Events, TableKind::Nodes, TableKind::Heartbeats, TableKind::Receipts];

    /// True for the side tables, which are committed every
    /// `--side-table-interval` rather than at every flush.
    pub fn is_side(self) -> bool {
        self != TableKind::Events
    }

    /// Table (and directory) name.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Events => "events",
            TableKind::Nodes => "nodes",
            TableKind::Heartbeats => "heartbeats",
            TableKind::Receipts => "receipts",
        }
    }

    /// Arrow schema of the table.
    pub fn schema(self) -> SchemaRef {
        match self {
            TableKind::Events => estate_schemas::events_schema(),
            TableKind::Nodes => estate_schemas::nodes_schema(),
            TableKind::Heartbeats => estate_schemas::heartbeats_schema(),
            TableKind::Receipts => estate_schemas::receipts_schema(),
        }
    }

    /// Index into per-table arrays.
    pub fn idx(self) -> usize {
        self as usize
    }
}

/// The Delta application id of one Kafka partition: `estate-ingest/<topic>/<partition>`,
/// or `estate-ingest/<source-id>/<topic>/<partition>` when the cluster is named
/// by `--source-id` (a cluster whose offsets start again, such as the
/// embedded broker of `estate standalone`, gets a new one each start).
pub fn app_id(source_id: Option<&str>, topic: &str, partition: i32) -> String {
    match source_id {
        Some(s) => format!("estate-ingest/{s}/{topic}/{partition}"),
        None => format!("estate-ingest/{topic}/{partition}"),
    }
}

/// A partition's place in one commit.
#[derive(Debug, Clone)]
pub struct TxnClaim {
    /// `estate-ingest/<topic>/<partition>`.
    pub app_id: String,
    /// The version the table must hold now (`None`: never committed).
    pub expected: Option<i64>,
    /// The last offset this commit includes.
    pub target: i64,
}

/// What a commit attempt found.
#[derive(Debug)]
pub enum CommitOutcome {
    /// Committed (or found already committed by this very claim).
    Committed,
    /// These app ids hold a version that is neither expected nor target:
    /// another consumer owns the partition now. Nothing was committed.
    Lost(Vec<String>),
}

/// Parquet settings: zstd, dictionaries for the repetitive columns, delta
/// encoding for monotonic integers, and large row groups for scans.
pub fn writer_properties(kind: TableKind) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by(format!("estate {}", env!("CARGO_PKG_VERSION")));
    if kind == TableKind::Events {
        b = b.set_column_dictionary_enabled(ColumnPath::from("event_id"), false);
        for col in ["seq", "src_offset"] {
            b = b
                .set_column_dictionary_enabled(ColumnPath::from(col), false)
                .set_column_encoding(ColumnPath::from(col), Encoding::DELTA_BINARY_PACKED);
        }
    }
    b.build()
}

/// A loaded Delta table plus the writer settings for it.
#[derive(Debug)]
pub struct DeltaSink {
    kind: TableKind,
    table: DeltaTable,
    txns: TxnCache,
    /// Commits made through this sink.
    commits: u64,
}

/// The application transaction versions this sink has seen, exact as of one
/// table version. Reading a version from the snapshot replays the log since
/// the last checkpoint (tens of ms per partition per flush, growing between
/// checkpoints); the cache is brought forward instead by reading only the
/// commits made since, which is one small JSON file per commit.
#[derive(Debug, Default)]
struct TxnCache {
    /// The table version the entries are exact at.
    at: Option<u64>,
    /// app id -> stored version (`None`: known to have none).
    versions: HashMap<String, Option<i64>>,
}

/// A sink's commits between two expired-log clean-ups.
const LOG_CLEANUP_EVERY: u64 = 100;

/// Commits the cache will read to catch up before it gives up and starts
/// again from the snapshot.
const TXN_CATCH_UP_MAX: u64 = 1000;

/// The `txn` actions of one commit file, in order.
fn commit_txns(bytes: &[u8]) -> std::result::Result<Vec<(String, i64)>, serde_json::Error> {
    let mut out = Vec::new();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
        let v: serde_json::Value = serde_json::from_slice(line)?;
        if let Some(t) = v.get("txn")
            && let (Some(id), Some(version)) = (t.get("appId").and_then(|x| x.as_str()), t.get("version").and_then(|x| x.as_i64()))
        {
            out.push((id.to_string(), version));
        }
    }
    Ok(out)
}

impl DeltaSink {
    /// Loads the table, creating it when the store has none yet. Safe when
    /// several instances start at once: a lost creation race just loads.
    pub async fn open(store: &Store, kind: TableKind) -> Result<DeltaSink> {
        let name = kind.name();
        let mut table = store.table(name)?;
        for attempt in 0..5 {
            let exists = table
                .log_store()
                .is_delta_table_location()
                .await
                .map_err(Error::delta(name))?;
            if exists {
                match table.load().await {
                    Ok(()) => return Ok(DeltaSink { kind, table, txns: TxnCache::default(), commits: 0 }),
                    Err(e) if attempt < 4 => {
                        tracing::debug!(table = name, error = %e, "load raced with creation; retrying");
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        table = store.table(name)?;
                        continue;
                    }
                    Err(e) => return Err(Error::delta(name)(e)),
                }
            }
            let schema: StructType = kind
                .schema()
                .as_ref()
                .try_into_kernel()
                .map_err(|e| Error::delta(name)(e.into()))?;
            let created = CreateBuilder::new()
                .with_log_store(table.log_store())
                .with_columns(schema.fields().cloned())
                .with_partition_columns(PARTITION_COLUMNS)
                .with_table_name(name)
                .with_save_mode(SaveMode::Ignore)
                .await;
            match created {
                Ok(t) => {
                    tracing::info!(table = name, "created table");
                    return Ok(DeltaSink { kind, table: t, txns: TxnCache::default(), commits: 0 });
                }
                Err(e) => {
                    // Another instance created it first: load theirs.
                    tracing::debug!(table = name, error = %e, "create raced; reloading");
                    table = store.table(name)?;
                }
            }
        }
        Err(Error::Config(format!("could not load or create table {name}")))
    }

    /// Which table.
    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// The loaded table.
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// Reads new commits incrementally.
    pub async fn refresh(&mut self) -> Result<()> {
        self.table.update_incremental(None).await.map_err(Error::delta(self.kind.name()))
    }

    /// The stored version (last committed offset) of an app id on the loaded snapshot.
    pub async fn version_of(&self, app_id: &str) -> Result<Option<i64>> {
        let state = self.table.snapshot().map_err(Error::delta(self.kind.name()))?;
        state
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(Error::delta(self.kind.name()))
    }

    /// Like [`version_of`](Self::version_of), on the loaded snapshot, but
    /// from the cache, brought forward over the commits made since it was
    /// last exact.
    async fn stored_version(&mut self, app_id: &str) -> Result<Option<i64>> {
        let now = self.table.version();
        if self.txns.at != now {
            self.catch_up_txns(now).await;
        }
        if let Some(v) = self.txns.versions.get(app_id) {
            return Ok(*v);
        }
        let v = self.version_of(app_id).await?;
        self.txns.versions.insert(app_id.to_string(), v);
        Ok(v)
    }

    /// Brings the cache to table version `now` by reading the commits after
    /// the one it is exact at; on any doubt it is emptied and refilled from
    /// the snapshot.
    async fn catch_up_txns(&mut self, now: Option<u64>) {
        let from = match (self.txns.at, now) {
            (Some(at), Some(now)) if now > at && now - at <= TXN_CATCH_UP_MAX => at + 1,
            _ => {
                self.txns = TxnCache { at: now, versions: HashMap::new() };
                return;
            }
        };
        let Some(now) = now else { return };
        let store = self.table.log_store();
        for v in from..=now {
            let txns = match store.read_commit_entry(v).await {
                Ok(Some(bytes)) => commit_txns(&bytes).map_err(|e| e.to_string()),
                Ok(None) => Err("the commit file is gone".to_string()),
                Err(e) => Err(e.to_string()),
            };
            match txns {
                Ok(txns) => {
                    for (id, version) in txns {
                        self.txns.versions.insert(id, Some(version));
                    }
                }
                Err(e) => {
                    tracing::debug!(table = self.kind.name(), version = v, error = %e, "cannot read a commit's transactions; reading them from the snapshot");
                    self.txns = TxnCache { at: Some(now), versions: HashMap::new() };
                    return;
                }
            }
        }
        self.txns.at = Some(now);
    }

    /// Writes batches as Parquet files (not yet visible to anyone) and returns
    /// their add actions.
    pub async fn write_files(&self, batches: &[RecordBatch]) -> Result<Vec<Add>> {
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        let name = self.kind.name();
        let mut writer = RecordBatchWriter::for_table(&self.table)
            .map_err(Error::delta(name))?
            .with_writer_properties(writer_properties(self.kind));
        for b in batches.iter().filter(|b| b.num_rows() > 0) {
            writer.write(b.clone()).await.map_err(Error::delta(name))?;
        }
        writer.flush().await.map_err(Error::delta(name))
    }

    /// The fenced commit: refresh, check every claim against the stored
    /// version, then commit `adds` with all claims as application
    /// transactions on that same snapshot. Retries transient failures with
    /// jittered backoff until committed or a claim is lost. The Parquet files
    /// are written once (again only after a failed write).
    /// Returns the outcome and the Parquet bytes committed.
    pub async fn commit_fenced(&mut self, claims: &[TxnClaim], batches: &[RecordBatch]) -> Result<(CommitOutcome, u64)> {
        let name = self.kind.name();
        let mut adds: Option<Vec<Add>> = None;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if attempt > MAX_ATTEMPTS {
                return Err(Error::Config(format!(
                    "table {name}: commit still failing after {MAX_ATTEMPTS} attempts; giving up this flush"
                )));
            }
            if attempt > 1 {
                backoff(attempt).await;
            }
            let t_refresh = std::time::Instant::now();
            if let Err(e) = self.refresh().await {
                tracing::warn!(table = name, error = %e, attempt, "refreshing table failed; retrying");
                continue;
            }
            let refresh_took = t_refresh.elapsed();
            let t_check = std::time::Instant::now();
            let mut lost = Vec::new();
            let mut done = 0;
            for c in claims {
                let stored = match self.stored_version(&c.app_id).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(table = name, error = %e, "reading app transaction failed");
                        lost.clear();
                        done = usize::MAX;
                        break;
                    }
                };
                if stored == Some(c.target) && c.expected != Some(c.target) {
                    done += 1;
                } else if stored != c.expected {
                    lost.push(c.app_id.clone());
                }
            }
            if done == usize::MAX {
                continue;
            }
            if done == claims.len() && done > 0 {
                // An earlier attempt committed and only its answer was lost.
                return Ok((CommitOutcome::Committed, 0));
            }
            if done > 0 || !lost.is_empty() {
                let mut all = lost;
                if done > 0 {
                    all.extend(claims.iter().map(|c| c.app_id.clone()));
                    all.sort();
                    all.dedup();
                }
                return Ok((CommitOutcome::Lost(all), 0));
            }
            let check_took = t_check.elapsed();
            let t_write = std::time::Instant::now();
            if adds.is_none() {
                match self.write_files(batches).await {
                    Ok(a) => adds = Some(a),
                    Err(e) => {
                        tracing::warn!(table = name, error = %e, attempt, "writing parquet failed; retrying");
                        continue;
                    }
                }
            }
            let write_took = t_write.elapsed();
            let t_commit = std::time::Instant::now();
            let actions: Vec<Action> = adds.clone().unwrap_or_default().into_iter().map(Action::Add).collect();
            let txns = claims.iter().map(|c| Transaction::new(&c.app_id, c.target)).collect();
            // Expired-log clean-up lists the whole `_delta_log` directory, so
            // it runs with every hundredth commit, not every one.
            let props = CommitProperties::default()
                .with_application_transactions(txns)
                .with_max_retries(15)
                .with_cleanup_expired_logs((!self.commits.is_multiple_of(LOG_CLEANUP_EVERY)).then_some(false));
            let snapshot = self.table.snapshot().map_err(Error::delta(name))?;
            let op = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(PARTITION_COLUMNS.iter().map(|s| s.to_string()).collect()),
                predicate: None,
            };
            let base = snapshot.version();
            let result = CommitBuilder::from(props)
                .with_actions(actions)
                .build(Some(snapshot), self.table.log_store(), op)
                .await;
            match result {
                Ok(done) => {
                    // Carry on from the state after this commit (the post-commit
                    // hook has already brought it forward), so the next refresh
                    // has nothing of ours to replay.
                    if done.version == base + 1 && self.txns.at == Some(base) {
                        for c in claims {
                            self.txns.versions.insert(c.app_id.clone(), Some(c.target));
                        }
                        self.txns.at = Some(done.version);
                    }
                    self.table.state = Some(done.snapshot);
                    self.commits += 1;
                    tracing::debug!(table = name, refresh = ?refresh_took, check = ?check_took, write = ?write_took,
                        commit = ?t_commit.elapsed(), "fenced commit");
                    let bytes = adds.iter().flatten().map(|a| a.size.max(0) as u64).sum();
                    return Ok((CommitOutcome::Committed, bytes));
                }
                Err(DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
                }) => {
                    tracing::warn!(table = name, "concurrent transaction on one of our partitions; re-checking ownership");
                }
                Err(e) => {
                    tracing::warn!(table = name, error = %e, attempt, "delta commit failed; retrying the same batch");
                    // Files may be half-written on a store fault; write afresh next time.
                    if matches!(e, DeltaTableError::ObjectStore { .. }) {
                        adds = None;
                    }
                }
            }
        }
    }
}

/// Attempts per fenced commit (about two minutes of backoff).
const MAX_ATTEMPTS: u32 = 70;

/// Jittered exponential backoff: 20 ms doubling to 2 s.
async fn backoff(attempt: u32) {
    use rand::Rng;
    let base = 20u64.saturating_mul(1 << attempt.min(7)).min(2000);
    let jitter = rand::rng().random_range(0..=base / 2);
    tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, expected: Option<i64>, target: i64) -> TxnClaim {
        TxnClaim { app_id: id.to_string(), expected, target }
    }

    fn committed(o: (CommitOutcome, u64)) -> bool {
        matches!(o.0, CommitOutcome::Committed)
    }

    #[test]
    fn commit_txns_reads_only_txn_actions() {
        let log = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE"}}
{"txn":{"appId":"estate-ingest/t/0","version":41,"lastUpdated":5}}
{"add":{"path":"a.parquet","size":1}}
{"txn":{"appId":"estate-ingest/t/1","version":7}}
"#;
        assert_eq!(commit_txns(log).unwrap(), vec![("estate-ingest/t/0".to_string(), 41), ("estate-ingest/t/1".to_string(), 7)]);
        assert!(commit_txns(b"{not json\n").is_err());
    }

    /// Two sinks on one table, as two ingest instances: each one's cache must
    /// see the other's commits, so the fence holds with the cache in front of
    /// the snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fence_holds_across_cached_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), Default::default(), None).unwrap();
        let mut a = DeltaSink::open(&store, TableKind::Receipts).await.unwrap();
        let mut b = DeltaSink::open(&store, TableKind::Receipts).await.unwrap();
        // a owns p0 and commits twice; the second check is served by the cache.
        assert!(committed(a.commit_fenced(&[claim("p0", None, 10)], &[]).await.unwrap()));
        assert!(committed(a.commit_fenced(&[claim("p0", Some(10), 20)], &[]).await.unwrap()));
        // b commits p1: a's cache is brought forward over b's commit.
        assert!(committed(b.commit_fenced(&[claim("p1", None, 5)], &[]).await.unwrap()));
        assert!(committed(a.commit_fenced(&[claim("p0", Some(20), 30)], &[]).await.unwrap()));
        assert_eq!(a.stored_version("p1").await.unwrap(), Some(5));
        // b takes p0 over (resuming from 30) and commits it: a is fenced off.
        assert!(committed(b.commit_fenced(&[claim("p0", Some(30), 40)], &[]).await.unwrap()));
        match a.commit_fenced(&[claim("p0", Some(30), 50)], &[]).await.unwrap().0 {
            CommitOutcome::Lost(ids) => assert_eq!(ids, vec!["p0".to_string()]),
            CommitOutcome::Committed => panic!("a zombie committed over the new owner"),
        }
        // What the cache says equals what the snapshot says.
        a.refresh().await.unwrap();
        for id in ["p0", "p1", "p2"] {
            assert_eq!(a.stored_version(id).await.unwrap(), a.version_of(id).await.unwrap(), "{id}");
        }
        assert_eq!(a.stored_version("p0").await.unwrap(), Some(40));
    }
}
