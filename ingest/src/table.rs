//! One Delta table as ingest writes it: Parquet files plus one commit per
//! flush that carries an application transaction per Kafka partition, behind
//! the zombie fence described in `ARCHITECTURE.md`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitConflictError, CommitData, CommitProperties, PROTOCOL, TransactionError,
};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::parquet::basic::{Compression, Encoding, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::logstore::CommitOrBytes;
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use estate_schemas::PARTITION_COLUMNS;
use uuid::Uuid;

use crate::checkpoint::{checkpoint_overdue, last_checkpoint_version, write_checkpoint};
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
/// encoding for monotonic integers, and large row groups for scans. zstd's
/// level 1 made smaller files than level 3 on the NMIS mix, and faster ones
/// (docs/performance.md, "2026-12-07").
pub fn writer_properties(kind: TableKind) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid zstd level")))
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

/// A table as one ingest instance writes it.
///
/// The sink keeps a view of the table's Delta log instead of following it
/// with delta-rs's snapshot. delta-rs re-lists and re-processes every active
/// file of the table when it brings a loaded snapshot forward, on a refresh
/// and again after every commit. That cost grows with the file count; at 30k
/// events/s it was most of each flush. A blind append does not need the file
/// list: it needs the log's newest version, the application transactions
/// (for the fence), and proof that nobody changed the schema or protocol
/// underneath it. Those are in the commit files themselves, one small JSON
/// file per commit, so that is what the sink reads (see docs/ingest.md,
/// "How a commit is written").
#[derive(Debug)]
pub struct DeltaSink {
    kind: TableKind,
    /// The table with its file list, loaded at the last full refresh.
    /// Restore reads it; blind commits take its schema, partition columns,
    /// protocol and configuration, which no commit since has changed.
    table: DeltaTable,
    view: LogView,
    /// Whether this sink writes its commits itself, as a conditional put of
    /// the next log entry. delta-rs's default log store (local files, S3 with
    /// conditional put, GCS, Azure, memory) commits that way too; any other
    /// log store goes through delta-rs's CommitBuilder.
    blind: bool,
    /// Commits made through this sink.
    commits: u64,
    /// The checkpoint being written in the background, if any.
    checkpoint: Option<tokio::task::JoinHandle<()>>,
}

/// What the sink knows of the log beyond its loaded snapshot.
#[derive(Debug)]
struct LogView {
    /// The newest version this sink has read or written.
    head: Option<u64>,
    /// app id -> stored version (`None`: known to have none), exact as of
    /// `head`. An app id that is missing has had no transaction since the
    /// loaded snapshot's version, so the snapshot answers for it.
    versions: HashMap<String, Option<i64>>,
    /// When the view last reached the end of the log.
    read_at: Instant,
}

impl LogView {
    fn at(version: Option<u64>) -> LogView {
        LogView { head: version, versions: HashMap::new(), read_at: Instant::now() }
    }
}

/// A sink's commits between two expired-log clean-ups on the CommitBuilder path.
const LOG_CLEANUP_EVERY: u64 = 100;

/// Commits the view reads to catch up before it reloads the table instead.
const TXN_CATCH_UP_MAX: u64 = 1000;

/// A view older than this is rebuilt from a full load before the next commit.
/// Expired-log clean-up deletes commit files only after 30 days (Delta's
/// default log retention), so a view this fresh can never step over a
/// version that was cleaned up and reuse its number.
const VIEW_MAX_AGE: Duration = Duration::from_secs(600);

/// What one commit file says that matters to a blind append.
#[derive(Debug, Default, PartialEq)]
struct CommitScan {
    /// The `txn` actions, in order.
    txns: Vec<(String, i64)>,
    /// The commit changed the table's metadata or protocol.
    changes_table: bool,
}

/// Reads a commit file's `txn`, `metaData` and `protocol` actions.
fn scan_commit(bytes: &[u8]) -> std::result::Result<CommitScan, serde_json::Error> {
    let mut out = CommitScan::default();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
        let v: serde_json::Value = serde_json::from_slice(line)?;
        if let Some(t) = v.get("txn") {
            if let (Some(id), Some(version)) = (t.get("appId").and_then(|x| x.as_str()), t.get("version").and_then(|x| x.as_i64())) {
                out.txns.push((id.to_string(), version));
            }
        } else if v.get("metaData").is_some() || v.get("protocol").is_some() {
            out.changes_table = true;
        }
    }
    Ok(out)
}

/// How far reading the log got.
enum LogRead {
    /// Reached the end of the log; `changed`: a commit read changed the
    /// table's metadata or protocol.
    AtEnd { changed: bool },
    /// Stopped after [`TXN_CATCH_UP_MAX`] commits (or not read at all):
    /// reload the table instead.
    Behind,
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
                    Ok(()) => return Ok(DeltaSink::new(kind, table)),
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
                    return Ok(DeltaSink::new(kind, t));
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

    fn new(kind: TableKind, table: DeltaTable) -> DeltaSink {
        let view = LogView::at(table.version());
        let blind = table.log_store().name() == "DefaultLogStore";
        DeltaSink { kind, table, view, blind, commits: 0, checkpoint: None }
    }

    /// Which table.
    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// The loaded table, as of the last [`refresh`](Self::refresh) (commits
    /// since then are not in its file list).
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// Loads the table's newest version with its file list and rebases the
    /// view on it. Restore calls this before it reads the table.
    pub async fn refresh(&mut self) -> Result<()> {
        let name = self.kind.name();
        self.table.update_incremental(None).await.map_err(Error::delta(name))?;
        let now = self.table.version();
        // Bring the cache over the commits between the view's head and the
        // new base, so what it holds stays exact; on any doubt, start empty.
        let carried = match (self.view.head, now) {
            (Some(head), Some(now)) if now >= head && now - head <= TXN_CATCH_UP_MAX => {
                self.read_commits(head + 1, Some(now)).await.map(|_| ())
            }
            _ => Err("the loaded version is not ahead of the view".to_string()),
        };
        if let Err(e) = carried {
            tracing::debug!(table = name, error = %e, "starting the transaction cache afresh from the snapshot");
            self.view.versions.clear();
        }
        self.view.head = now;
        self.view.read_at = Instant::now();
        Ok(())
    }

    /// Reads the commit files from version `from` on, up to `until` (which
    /// must all exist) or else to the end of the log, applying their
    /// application transactions to the view and moving its head.
    async fn read_commits(&mut self, from: u64, until: Option<u64>) -> std::result::Result<LogRead, String> {
        let store = self.table.log_store();
        let mut changed = false;
        let mut v = from;
        while until.is_none_or(|u| v <= u) {
            if v - from >= TXN_CATCH_UP_MAX {
                return Ok(LogRead::Behind);
            }
            let bytes = match store.read_commit_entry(v).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) if until.is_none() => break,
                Ok(None) => return Err(format!("commit {v} is gone")),
                Err(e) => return Err(format!("commit {v}: {e}")),
            };
            let scan = scan_commit(&bytes).map_err(|e| format!("commit {v}: {e}"))?;
            for (id, version) in scan.txns {
                self.view.versions.insert(id, Some(version));
            }
            changed |= scan.changes_table;
            self.view.head = Some(v);
            v += 1;
        }
        Ok(LogRead::AtEnd { changed })
    }

    /// Brings the view to the end of the log before the fence check: by
    /// reading the commits after its head, or by a full refresh when the
    /// sink does not write blind, the view is stale, the log is far ahead,
    /// or a commit changed the table's metadata or protocol. Returns whether
    /// the commit may be written blind.
    async fn catch_up(&mut self) -> Result<bool> {
        let name = self.kind.name();
        let read = match self.view.head {
            Some(head) if self.blind && self.view.read_at.elapsed() <= VIEW_MAX_AGE => self
                .read_commits(head + 1, None)
                .await
                .map_err(|e| Error::delta(name)(DeltaTableError::Generic(format!("reading the log: {e}"))))?,
            _ => LogRead::Behind,
        };
        match read {
            LogRead::AtEnd { changed: false } => self.view.read_at = Instant::now(),
            LogRead::AtEnd { changed: true } => {
                tracing::info!(table = name, "another writer changed the table's metadata or protocol; reloading it");
                self.refresh().await?;
            }
            LogRead::Behind => self.refresh().await?,
        }
        Ok(self.blind)
    }

    /// The stored version (last committed offset) of an app id on the loaded snapshot.
    pub async fn version_of(&self, app_id: &str) -> Result<Option<i64>> {
        let state = self.table.snapshot().map_err(Error::delta(self.kind.name()))?;
        state
            .transaction_version(self.table.log_store().as_ref(), app_id)
            .await
            .map_err(Error::delta(self.kind.name()))
    }

    /// The stored version of an app id as of the view's head: from the cache,
    /// or else from the loaded snapshot, since no commit after it names the
    /// app id.
    async fn stored_version(&mut self, app_id: &str) -> Result<Option<i64>> {
        if let Some(v) = self.view.versions.get(app_id) {
            return Ok(*v);
        }
        let v = self.version_of(app_id).await?;
        self.view.versions.insert(app_id.to_string(), v);
        Ok(v)
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

    /// The fenced commit: bring the view to the end of the log, check every
    /// claim against the stored version, then commit `adds` with all claims
    /// as application transactions as the very next version. Retries
    /// transient failures with jittered backoff until committed or a claim is
    /// lost. The Parquet files are written once (again only after a failed
    /// write). Returns the outcome and the Parquet bytes committed.
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
            let t_read = Instant::now();
            let blind = match self.catch_up().await {
                Ok(blind) => blind,
                Err(e) => {
                    tracing::warn!(table = name, error = %e, attempt, "reading the table's log failed; retrying");
                    continue;
                }
            };
            let read_took = t_read.elapsed();
            let t_check = Instant::now();
            let mut lost = Vec::new();
            let mut done = 0;
            let mut unreadable = false;
            for c in claims {
                let stored = match self.stored_version(&c.app_id).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(table = name, error = %e, "reading app transaction failed");
                        unreadable = true;
                        break;
                    }
                };
                if stored == Some(c.target) && c.expected != Some(c.target) {
                    done += 1;
                } else if stored != c.expected {
                    lost.push(c.app_id.clone());
                }
            }
            if unreadable {
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
            let t_write = Instant::now();
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
            let t_commit = Instant::now();
            let actions: Vec<Action> = adds.clone().unwrap_or_default().into_iter().map(Action::Add).collect();
            let txns: Vec<Transaction> = claims.iter().map(|c| Transaction::new(&c.app_id, c.target)).collect();
            let op = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(PARTITION_COLUMNS.iter().map(|s| s.to_string()).collect()),
                predicate: None,
            };
            let result = if blind {
                self.commit_blind(actions, txns, op).await
            } else {
                self.commit_with_builder(actions, txns, op).await
            };
            match result {
                Ok(Some(version)) => {
                    if self.view.head.map(|h| h + 1) == Some(version) {
                        for c in claims {
                            self.view.versions.insert(c.app_id.clone(), Some(c.target));
                        }
                        self.view.head = Some(version);
                    }
                    self.commits += 1;
                    if blind {
                        self.maybe_checkpoint(version);
                    }
                    tracing::debug!(table = name, version, blind, read = ?read_took, check = ?check_took, write = ?write_took,
                        commit = ?t_commit.elapsed(), "fenced commit");
                    let bytes = adds.iter().flatten().map(|a| a.size.max(0) as u64).sum();
                    return Ok((CommitOutcome::Committed, bytes));
                }
                Ok(None) => {
                    tracing::debug!(table = name, attempt, "another writer committed first; reading its commit and checking again");
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

    /// Writes the commit as log entry `head + 1`, with a conditional put.
    /// `Ok(None)`: another writer took that version first; the next attempt
    /// reads its commit and checks the fence again, which is delta-rs's
    /// conflict check for an append (a concurrent transaction on one of our
    /// app ids, or a change of metadata or protocol).
    async fn commit_blind(&mut self, actions: Vec<Action>, txns: Vec<Transaction>, op: DeltaOperation) -> std::result::Result<Option<u64>, DeltaTableError> {
        let Some(head) = self.view.head else {
            return Err(DeltaTableError::Generic("the table has no version to append to".to_string()));
        };
        PROTOCOL.can_commit(self.table.snapshot()?, &actions, &op)?;
        let bytes = CommitData::new(actions, op, HashMap::new(), txns).get_bytes()?;
        let version = head + 1;
        match self.table.log_store().write_commit_entry(version, CommitOrBytes::LogBytes(bytes), Uuid::new_v4()).await {
            Ok(()) => Ok(Some(version)),
            Err(TransactionError::VersionAlreadyExists(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Commits through delta-rs's CommitBuilder on the loaded snapshot, which
    /// [`catch_up`](Self::catch_up) has just brought to the end of the log.
    /// `Ok(None)`: a concurrent transaction on one of our app ids.
    async fn commit_with_builder(&mut self, actions: Vec<Action>, txns: Vec<Transaction>, op: DeltaOperation) -> std::result::Result<Option<u64>, DeltaTableError> {
        // Expired-log clean-up lists the whole `_delta_log` directory, so
        // it runs with every hundredth commit, not every one.
        let props = CommitProperties::default()
            .with_application_transactions(txns)
            .with_max_retries(15)
            .with_cleanup_expired_logs((!self.commits.is_multiple_of(LOG_CLEANUP_EVERY)).then_some(false));
        let snapshot = self.table.snapshot()?;
        let result = CommitBuilder::from(props)
            .with_actions(actions)
            .build(Some(snapshot), self.table.log_store(), op)
            .await;
        match result {
            Ok(done) => {
                // The post-commit hook has brought the snapshot forward to the
                // commit; carry on from it.
                self.table.state = Some(done.snapshot);
                Ok(Some(done.version))
            }
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction),
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Checkpoints are the compactor's job (`estate compact`, or the one
    /// ingest embeds): ingest is only the backstop. Every
    /// `delta.checkpointInterval` commits it looks up the newest checkpoint
    /// (`_delta_log/_last_checkpoint`) and writes one in the background only
    /// when the log has run [`CHECKPOINT_BACKSTOP`](crate::checkpoint::CHECKPOINT_BACKSTOP) intervals past it, that
    /// is when no compactor is keeping the table. A checkpoint still being
    /// written when the next look-up is due makes that one be skipped.
    ///
    /// Why not always, as delta-rs does: each checkpoint reads the whole
    /// table state (13–22 MiB of heap for a soak's `events` table), and with
    /// one every 50 s on changing threads the allocator kept more memory
    /// after each; ingest's RSS rose for 15 minutes. Without them it stayed
    /// flat (docs/reliability.md, "Ingest's checkpoints").
    fn maybe_checkpoint(&mut self, version: u64) {
        let Ok(state) = self.table.snapshot() else { return };
        let every = state.table_config().checkpoint_interval().get();
        if !(version + 1).is_multiple_of(every) {
            return;
        }
        let name = self.kind.name();
        if self.checkpoint.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::debug!(table = name, version, "the previous checkpoint is still being written; skipping this one");
            return;
        }
        let config = state.table_config();
        let retention = config.enable_expired_log_cleanup().then(|| config.log_retention_duration());
        let log_store = self.table.log_store();
        self.checkpoint = Some(tokio::spawn(async move {
            let newest = last_checkpoint_version(log_store.as_ref()).await;
            if !checkpoint_overdue(version, newest, every) {
                tracing::debug!(table = name, version, newest, "a recent checkpoint exists; leaving checkpoints to the compactor");
                return;
            }
            let started = Instant::now();
            match write_checkpoint(log_store, version, retention).await {
                Ok(cleaned) => tracing::debug!(table = name, version, cleaned, took = ?started.elapsed(), "checkpoint written"),
                Err(e) => tracing::warn!(table = name, version, error = %e, "writing a checkpoint failed; the next one covers it"),
            }
        }));
    }

    /// Waits for a checkpoint being written in the background, if any.
    pub async fn checkpoint_written(&mut self) {
        if let Some(h) = self.checkpoint.take() {
            let _ = h.await;
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

    /// Two sinks on one new table in a temporary store, as two ingest
    /// instances would have.
    async fn two_sinks(kind: TableKind) -> (tempfile::TempDir, DeltaSink, DeltaSink) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), Default::default(), None).unwrap();
        let a = DeltaSink::open(&store, kind).await.unwrap();
        let b = DeltaSink::open(&store, kind).await.unwrap();
        (dir, a, b)
    }

    #[test]
    fn scan_commit_reads_txns_and_table_changes() {
        let log = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE"}}
{"txn":{"appId":"estate-ingest/t/0","version":41,"lastUpdated":5}}
{"add":{"path":"a.parquet","size":1,"stats":"{\"numRecords\":3}"}}
{"txn":{"appId":"estate-ingest/t/1","version":7}}
"#;
        let scan = scan_commit(log).unwrap();
        assert_eq!(scan.txns, vec![("estate-ingest/t/0".to_string(), 41), ("estate-ingest/t/1".to_string(), 7)]);
        assert!(!scan.changes_table);
        assert!(scan_commit(b"{\"metaData\":{\"id\":\"x\"}}\n").unwrap().changes_table);
        assert!(scan_commit(b"{\"protocol\":{\"minReaderVersion\":3}}").unwrap().changes_table);
        assert!(scan_commit(b"{not json\n").is_err());
    }

    /// The race the fence check cannot see: another writer commits between
    /// our check and our put. The conditional put refuses the version, and
    /// the next attempt reads the winner's commit and finds the partition
    /// taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_loses_the_put_race_is_fenced() {
        let (_dir, mut a, mut b) = two_sinks(TableKind::Events).await;
        assert!(a.blind && b.blind, "the local store commits by conditional put");
        assert!(committed(a.commit_fenced(&[claim("p0", None, 10)], &[]).await.unwrap()));
        assert!(committed(b.commit_fenced(&[claim("p1", None, 5)], &[]).await.unwrap()));
        // b has checked the fence at its head; then a commits p0 first.
        let b_head = b.view.head;
        assert!(committed(a.commit_fenced(&[claim("p0", Some(10), 20)], &[]).await.unwrap()));
        let op = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        let put = b.commit_blind(Vec::new(), vec![Transaction::new("p0", 30)], op).await.unwrap();
        assert_eq!(put, None, "the put must refuse a version another writer took");
        assert_eq!(b.view.head, b_head, "a refused put does not move the head");
        match b.commit_fenced(&[claim("p0", Some(10), 30)], &[]).await.unwrap().0 {
            CommitOutcome::Lost(ids) => assert_eq!(ids, vec!["p0".to_string()]),
            CommitOutcome::Committed => panic!("committed over the winner of the race"),
        }
        // Only a's versions are stored.
        a.refresh().await.unwrap();
        assert_eq!(a.version_of("p0").await.unwrap(), Some(20));
        assert_eq!(a.version_of("p1").await.unwrap(), Some(5));
    }

    /// A metadata change by another writer makes the sink reload the table
    /// before it commits again, and its checkpoints follow the new interval:
    /// none while the compactor's checkpoint is recent, one once it is ten
    /// intervals behind. The table the blind commits leave behind loads in
    /// delta-rs with the same versions the view holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_metadata_change_is_picked_up_and_ingest_backs_up_the_compactors_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), Default::default(), None).unwrap();
        let mut a = DeltaSink::open(&store, TableKind::Heartbeats).await.unwrap();
        assert!(committed(a.commit_fenced(&[claim("p0", None, 1)], &[]).await.unwrap()));
        let mut other = store.table("heartbeats").unwrap();
        other.load().await.unwrap();
        let props = HashMap::from([("delta.checkpointInterval".to_string(), "4".to_string())]);
        other.set_tbl_properties().with_properties(props).await.unwrap();
        // versions: 0 create, 1 a, 2 properties; a's next commits are 3..=67.
        let compactor_at = 23;
        for offset in 2..=66 {
            assert!(committed(a.commit_fenced(&[claim("p0", Some(offset - 1), offset)], &[]).await.unwrap()));
            // One at a time: a checkpoint due while another is being written is skipped.
            a.checkpoint_written().await;
            if a.view.head == Some(compactor_at) {
                // A compactor's checkpoint, as `estate compact` writes it.
                let mut c = store.table("heartbeats").unwrap();
                c.load().await.unwrap();
                deltalake::checkpoints::create_checkpoint(&c, None).await.unwrap();
            }
        }
        assert_eq!(a.view.head, Some(67));
        let interval = a.table.snapshot().unwrap().table_config().checkpoint_interval().get();
        assert_eq!(interval, 4, "the sink reloaded the table after the metadata change");
        // Ingest wrote none while the compactor's was fewer than 10 intervals
        // behind, then the one at 23 + 40.
        let log = dir.path().join("heartbeats/_delta_log");
        let written: Vec<u64> = (0..=67).filter(|v| log.join(format!("{v:020}.checkpoint.parquet")).exists()).collect();
        assert_eq!(written, vec![compactor_at, compactor_at + crate::checkpoint::CHECKPOINT_BACKSTOP * 4]);
        assert_eq!(last_checkpoint_version(a.table.log_store().as_ref()).await, Some(63));
        let mut fresh = store.table("heartbeats").unwrap();
        fresh.load().await.unwrap();
        assert_eq!(fresh.version(), Some(67));
        let state = fresh.snapshot().unwrap();
        assert_eq!(state.transaction_version(fresh.log_store().as_ref(), "p0").await.unwrap(), Some(66));
    }

    /// Two sinks on one table, as two ingest instances: each one's cache must
    /// see the other's commits, so the fence holds with the cache in front of
    /// the snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fence_holds_across_cached_versions() {
        let (_dir, mut a, mut b) = two_sinks(TableKind::Receipts).await;
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
