//! One Delta table as ingest writes it: Parquet files plus one commit per
//! flush that carries an application transaction per Kafka partition, behind
//! the zombie fence described in `ARCHITECTURE.md`.

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
                    Ok(()) => return Ok(DeltaSink { kind, table }),
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
                    return Ok(DeltaSink { kind, table: t });
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
            if let Err(e) = self.refresh().await {
                tracing::warn!(table = name, error = %e, attempt, "refreshing table failed; retrying");
                continue;
            }
            let mut lost = Vec::new();
            let mut done = 0;
            for c in claims {
                let stored = match self.version_of(&c.app_id).await {
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
            if adds.is_none() {
                match self.write_files(batches).await {
                    Ok(a) => adds = Some(a),
                    Err(e) => {
                        tracing::warn!(table = name, error = %e, attempt, "writing parquet failed; retrying");
                        continue;
                    }
                }
            }
            let actions: Vec<Action> = adds.clone().unwrap_or_default().into_iter().map(Action::Add).collect();
            let txns = claims.iter().map(|c| Transaction::new(&c.app_id, c.target)).collect();
            let props = CommitProperties::default().with_application_transactions(txns).with_max_retries(15);
            let snapshot = self.table.snapshot().map_err(Error::delta(name))?;
            let op = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(PARTITION_COLUMNS.iter().map(|s| s.to_string()).collect()),
                predicate: None,
            };
            let result = CommitBuilder::from(props)
                .with_actions(actions)
                .build(Some(snapshot), self.table.log_store(), op)
                .await;
            match result {
                Ok(_) => {
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
