//! Reading a pinned table version: a DataFusion Parquet scan over exactly
//! the files a principal may read.
//!
//! delta-rs's own scan re-plans every query from the Delta snapshot (it
//! replays the file actions and parses their statistics each time) and
//! materialises the partition columns value by value after decoding. Both
//! showed in profiles of the standard queries (docs/design-direct-scan.md).
//! estate writes every file of its tables itself, with no deletion vectors
//! and no column mapping, so the file list, partition values and statistics
//! can be taken from the Delta log once per table version, at pin time, and
//! handed to DataFusion's Parquet source, which fills constant partition
//! columns natively.
//!
//! What the scan keeps from the contract:
//! - the contract's column order, with `tenant` and `date` as
//!   `Dictionary(UInt16, Utf8)` as delta-rs exposed them. Other strings are
//!   plain `Utf8`, not the `Utf8View` delta-rs used: DataFusion counts a
//!   view column's shared buffers once per batch, so after a join the
//!   `active_events` view was accounted at several times its size and
//!   failed the default memory limit (docs/performance.md);
//! - tenancy: a tenant's provider holds that tenant's files and no others;
//! - files pruned at planning time by partition values and Delta min/max
//!   statistics, so "files pruned" is what the plan skipped.
//!
//! A table version this reader cannot read correctly (a reader protocol
//! above 1, which is how column mapping and deletion vectors announce
//! themselves, other partition columns, or a file with a deletion vector)
//! is recognised when it is pinned, and the catalog reads it through
//! delta-rs's scan instead; it is never read wrongly.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use deltalake::{ObjectMeta, ObjectStore};
use deltalake::arrow::array::{ArrayRef, BooleanArray, UInt64Array};
use deltalake::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use deltalake::datafusion::catalog::{Session, TableProvider};
use deltalake::datafusion::common::pruning::PruningStatistics;
use deltalake::datafusion::common::stats::Precision;
use deltalake::datafusion::common::{Column, ColumnStatistics, DFSchema, ScalarValue, Statistics};
use deltalake::datafusion::datasource::TableType;
use deltalake::datafusion::datasource::file_format::FileFormat;
use deltalake::datafusion::datasource::file_format::parquet::ParquetFormat;
use deltalake::datafusion::datasource::listing::PartitionedFile;
use deltalake::datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use deltalake::datafusion::datasource::table_schema::TableSchema;
use deltalake::datafusion::error::Result as DfResult;
use deltalake::datafusion::execution::object_store::ObjectStoreUrl;
use deltalake::datafusion::logical_expr::utils::conjunction;
use deltalake::datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use deltalake::datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use deltalake::datafusion::physical_plan::ExecutionPlan;
use deltalake::datafusion::physical_plan::empty::EmptyExec;
use deltalake::kernel::LogicalFileView;
use estate_ingest::TableKind;
use estate_schemas::PARTITION_COLUMNS;

/// How one table's columns are laid out: the schema SQL sees, and the
/// Parquet source's (data columns, then partition columns).
#[derive(Debug)]
pub struct Layout {
    kind: TableKind,
    /// The columns as queries see them, in contract order.
    schema: SchemaRef,
    /// `schema` for planning filters into pruning predicates.
    df_schema: DFSchema,
    /// The columns stored in the data files, in contract order.
    file_schema: SchemaRef,
    /// `tenant` and `date`, in [`PARTITION_COLUMNS`] order.
    partition_fields: Vec<FieldRef>,
    /// For each column of `schema`, its index in the Parquet source's
    /// columns (`file_schema` then `partition_fields`).
    source_index: Vec<usize>,
    /// Where the per-query runtime finds this table's object store.
    url: ObjectStoreUrl,
}

/// The type a partition column has in queries: what DataFusion gives
/// partition columns (`wrap_partition_type_in_dict`).
fn partition_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8))
}

fn partition_value(v: &str) -> ScalarValue {
    ScalarValue::Dictionary(Box::new(DataType::UInt16), Box::new(ScalarValue::Utf8(Some(v.to_owned()))))
}

impl Layout {
    /// The layout of a table of the contract.
    pub fn new(kind: TableKind) -> Layout {
        let contract = kind.schema();
        let mut fields = Vec::with_capacity(contract.fields().len());
        let mut file_fields = Vec::new();
        for f in contract.fields() {
            if PARTITION_COLUMNS.contains(&f.name().as_str()) {
                fields.push(Field::new(f.name(), partition_type(), f.is_nullable()));
                continue;
            }
            file_fields.push(f.as_ref().clone());
            fields.push(f.as_ref().clone());
        }
        let schema = Arc::new(Schema::new(fields));
        let partition_fields: Vec<FieldRef> = PARTITION_COLUMNS
            .iter()
            .map(|p| Arc::new(schema.field_with_name(p).expect("partition column in contract").clone()))
            .collect();
        let file_schema = Arc::new(Schema::new(file_fields));
        let source_index = schema
            .fields()
            .iter()
            .map(|f| match PARTITION_COLUMNS.iter().position(|p| p == f.name()) {
                Some(p) => file_schema.fields().len() + p,
                None => file_schema.index_of(f.name()).expect("data column"),
            })
            .collect();
        let url = ObjectStoreUrl::parse(format!("estate-{}://table", kind.name()))
            .expect("a valid object store URL");
        let df_schema = DFSchema::try_from(schema.clone()).expect("contract columns have unique names");
        Layout { kind, schema, df_schema, file_schema, partition_fields, source_index, url }
    }

    /// Checks that the pinned table is one this reader reads correctly.
    pub fn check_table(&self, protocol: &serde_json::Value, metadata: &serde_json::Value) -> Result<(), String> {
        let table = self.kind.name();
        let Some(reader) = protocol.get("minReaderVersion").and_then(serde_json::Value::as_i64) else {
            return Err(format!("table {table}: its Delta protocol does not say which reader version it needs"));
        };
        if reader > 1 {
            let features = protocol.get("readerFeatures").map(ToString::to_string).unwrap_or_else(|| "none listed".into());
            return Err(format!(
                "table {table} needs Delta reader protocol {reader} (reader features: {features}); estate's own scan reads protocol 1 tables only, which is what estate ingest writes"
            ));
        }
        let partitions: Vec<&str> = metadata
            .get("partitionColumns")
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
            .unwrap_or_default();
        if partitions != PARTITION_COLUMNS {
            return Err(format!("table {table} is partitioned by {partitions:?}; estate expects {PARTITION_COLUMNS:?}"));
        }
        Ok(())
    }
}

/// One data file of a pinned version, with what planning needs to know.
#[derive(Debug)]
pub struct DataFile {
    /// The path relative to the table root, as the log names it (decoded).
    pub path: String,
    /// The tenant partition value.
    pub tenant: String,
    file: PartitionedFile,
    /// Rows in the file, when the log records it.
    rows: Option<u64>,
    /// Per column of the layout's `file_schema`: lower and upper bounds
    /// (typed nulls when unknown) and null counts.
    min: Vec<ScalarValue>,
    max: Vec<ScalarValue>,
    nulls: Vec<Option<u64>>,
}

impl DataFile {
    /// Reads one file action of the log; the error says why this reader
    /// cannot read the file.
    pub fn from_log(layout: &Layout, f: &LogicalFileView) -> Result<DataFile, String> {
        let path = f.path().into_owned();
        let table = layout.kind.name();
        let refuse = |why: &str| format!("table {table}, file {path}: {why}");
        if f.deletion_vector_descriptor().is_some() {
            return Err(refuse("a data file has a deletion vector, which estate does not read"));
        }
        let mut parts = f.partition_values_map();
        let mut value = |name: &str| parts.remove(name).flatten().ok_or_else(|| refuse(&format!("a data file has no {name} partition value")));
        let tenant = value("tenant")?;
        let date = value("date")?;
        let size = u64::try_from(f.size()).map_err(|_| refuse("a data file has a negative size"))?;
        // The footer cache checks size and modification time.
        let last_modified = chrono::DateTime::from_timestamp_millis(f.modification_time()).unwrap_or_default();
        let meta = ObjectMeta { location: f.object_store_path(), last_modified, size, e_tag: None, version: None };
        let file = PartitionedFile::new_from_meta(meta)
            .with_partition_values(vec![partition_value(&tenant), partition_value(&date)]);
        let stats: serde_json::Value = f.stats().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        let columns = layout.file_schema.fields();
        let bound = |key: &str, upper: bool| -> Vec<ScalarValue> {
            columns
                .iter()
                .map(|c| {
                    stats
                        .get(key)
                        .and_then(|m| m.get(c.name()))
                        .and_then(|v| stat_value(c.data_type(), v, upper))
                        .unwrap_or_else(|| ScalarValue::try_from(c.data_type()).unwrap_or(ScalarValue::Null))
                })
                .collect()
        };
        let min = bound("minValues", false);
        let max = bound("maxValues", true);
        let nulls = columns
            .iter()
            .map(|c| stats.get("nullCount").and_then(|m| m.get(c.name())).and_then(serde_json::Value::as_u64))
            .collect();
        let rows = stats.get("numRecords").and_then(serde_json::Value::as_u64);
        Ok(DataFile { path, tenant, file, rows, min, max, nulls })
    }

    /// Where the file is in the table's object store: the key the Parquet
    /// footer cache holds it under.
    pub fn location(&self) -> &deltalake::Path {
        &self.file.object_meta.location
    }

    /// The file action `f` as a [`DataFile`]: the one already parsed for an
    /// earlier version when the path, size and modification time match,
    /// else a newly parsed one.
    pub fn reuse(layout: &Layout, f: &LogicalFileView, known: &HashMap<&str, &Arc<DataFile>>) -> Result<Arc<DataFile>, String> {
        let same = |k: &&&Arc<DataFile>| {
            u64::try_from(f.size()).is_ok_and(|size| size == k.file.object_meta.size)
                && k.file.object_meta.last_modified.timestamp_millis() == f.modification_time()
                && f.deletion_vector_descriptor().is_none()
        };
        match known.get(f.path().as_ref()).filter(same) {
            Some(k) => Ok(Arc::clone(k)),
            None => DataFile::from_log(layout, f).map(Arc::new),
        }
    }
}

/// A Delta statistic as a bound of the column's query type. Delta writes
/// timestamps truncated to milliseconds, so an upper bound gets the rest of
/// its millisecond back.
fn stat_value(ty: &DataType, v: &serde_json::Value, upper: bool) -> Option<ScalarValue> {
    match ty {
        DataType::Int64 => v.as_i64().map(|x| ScalarValue::Int64(Some(x))),
        DataType::Int32 => v.as_i64().and_then(|x| i32::try_from(x).ok()).map(|x| ScalarValue::Int32(Some(x))),
        DataType::Utf8 => v.as_str().map(|s| ScalarValue::Utf8(Some(s.to_owned()))),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
            let us = t.timestamp_micros() + if upper { 999 } else { 0 };
            Some(ScalarValue::TimestampMicrosecond(Some(us), tz.clone()))
        }
        _ => None,
    }
}

/// The layout of each table, built once.
pub fn layout(kind: TableKind) -> Arc<Layout> {
    static LAYOUTS: LazyLock<Vec<Arc<Layout>>> =
        LazyLock::new(|| TableKind::ALL.iter().map(|k| Arc::new(Layout::new(*k))).collect());
    LAYOUTS[kind.idx()].clone()
}

/// The files of one pinned version a principal reads, as a table.
#[derive(Debug)]
pub struct EstateTable {
    layout: Arc<Layout>,
    /// The table's store, rooted at the table; `None` for a table that does
    /// not exist yet (and so has no files).
    store: Option<Arc<dyn ObjectStore>>,
    files: Vec<Arc<DataFile>>,
}

impl EstateTable {
    /// A table over `files` (already restricted to the principal), read from
    /// `store`.
    pub fn new(layout: Arc<Layout>, store: Option<Arc<dyn ObjectStore>>, files: Vec<Arc<DataFile>>) -> EstateTable {
        EstateTable { layout, store, files }
    }

    /// The files that may hold rows matching `filters`.
    ///
    /// Pruning only ever narrows the scan: a predicate the statistics cannot
    /// judge, or one DataFusion cannot turn into a pruning predicate, keeps
    /// every file, and the filter itself still runs on the rows.
    fn prune(&self, state: &dyn Session, filters: &[Expr]) -> Vec<&Arc<DataFile>> {
        let Some(filter) = conjunction(filters.iter().cloned()) else { return self.files.iter().collect() };
        let keep = state
            .create_physical_expr(filter, &self.layout.df_schema)
            .map(|expr| PruningPredicateBuilder::new().with_file_schema(self.layout.schema.clone()).build(expr))
            .and_then(|predicate| match predicate {
                Some(p) => p.prune(&FileStats { layout: &self.layout, files: &self.files }).map(Some),
                None => Ok(None),
            });
        match keep {
            Ok(Some(keep)) => self.files.iter().zip(keep).filter_map(|(f, k)| k.then_some(f)).collect(),
            Ok(None) => self.files.iter().collect(),
            Err(e) => {
                tracing::debug!(table = self.layout.kind.name(), error = %e, "file pruning skipped");
                self.files.iter().collect()
            }
        }
    }
}

/// Splits files into at most `n` groups of about equal bytes.
fn groups(mut files: Vec<&Arc<DataFile>>, n: usize) -> Vec<FileGroup> {
    files.sort_by_key(|f| std::cmp::Reverse(f.file.object_meta.size));
    let n = n.clamp(1, files.len().max(1));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for f in files {
        let g = groups.iter_mut().min_by_key(|(bytes, _)| *bytes).expect("n >= 1");
        g.0 += f.file.object_meta.size;
        g.1.push(f.file.clone());
    }
    groups.into_iter().filter(|(_, g)| !g.is_empty()).map(|(_, g)| FileGroup::new(g)).collect()
}

#[async_trait]
impl TableProvider for EstateTable {
    fn schema(&self) -> SchemaRef {
        self.layout.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Filters prune files and row groups; the rows are still filtered.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = self.prune(state, filters);
        let Some(store) = self.store.as_ref().filter(|_| !files.is_empty()) else {
            let schema = match projection {
                Some(p) => Arc::new(self.layout.schema.project(p)?),
                None => self.layout.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        };
        let indices: Vec<usize> = match projection {
            Some(p) => p.iter().map(|i| self.layout.source_index[*i]).collect(),
            None => self.layout.source_index.clone(),
        };
        // The store covers every tenant's files under a fixed URL. Sessions
        // cannot name a URL or path of their own (the statement gate refuses
        // CREATE EXTERNAL TABLE, COPY and every path-reading function), so the
        // file list above is all a session can read through it.
        state.runtime_env().register_object_store(self.layout.url.as_ref(), store.clone());
        let mut options = state.table_options().parquet.clone();
        options.global.schema_force_view_types = false;
        let format = ParquetFormat::default().with_options(options);
        let source = format.file_source(TableSchema::builder(self.layout.file_schema.clone()).with_table_partition_cols(self.layout.partition_fields.clone()).build());
        // Row counts from the log let DataFusion pick the smaller side of a
        // join as its build side (in `active_events`, the open conditions
        // rather than every stateful event).
        let rows: Option<usize> = files.iter().map(|f| f.rows.and_then(|r| usize::try_from(r).ok())).sum();
        let bytes = files.iter().map(|f| f.file.object_meta.size).sum::<u64>();
        let statistics = Statistics {
            num_rows: rows.map_or(Precision::Absent, Precision::Inexact),
            total_byte_size: usize::try_from(bytes).map_or(Precision::Absent, Precision::Inexact),
            column_statistics: vec![ColumnStatistics::new_unknown(); self.layout.source_index.len()],
        };
        let config = FileScanConfigBuilder::new(self.layout.url.clone(), source)
            .with_statistics(statistics)
            .with_file_groups(groups(files, state.config().target_partitions()))
            .with_projection_indices(Some(indices))?
            .with_limit(limit)
            .build();
        format.create_physical_plan(state, config).await
    }
}

/// Per-file statistics in the shape DataFusion's pruning asks for.
struct FileStats<'a> {
    layout: &'a Layout,
    files: &'a [Arc<DataFile>],
}

impl FileStats<'_> {
    fn bounds(&self, column: &Column, pick: impl Fn(&DataFile, usize) -> &ScalarValue) -> Option<ArrayRef> {
        let values: Vec<ScalarValue> = match PARTITION_COLUMNS.iter().position(|p| *p == column.name) {
            Some(p) => self.files.iter().map(|f| f.file.partition_values[p].clone()).collect(),
            None => {
                let i = self.layout.file_schema.index_of(&column.name).ok()?;
                self.files.iter().map(|f| pick(f, i).clone()).collect()
            }
        };
        ScalarValue::iter_to_array(values).ok()
    }
}

impl PruningStatistics for FileStats<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, |f, i| &f.min[i])
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, |f, i| &f.max[i])
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        if PARTITION_COLUMNS.contains(&column.name.as_str()) {
            return None;
        }
        let i = self.layout.file_schema.index_of(&column.name).ok()?;
        Some(Arc::new(self.files.iter().map(|f| f.nulls[i]).collect::<UInt64Array>()))
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(self.files.iter().map(|f| f.rows).collect::<UInt64Array>()))
    }

    fn contained(&self, _: &Column, _: &std::collections::HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// The files of an earlier version by path, so that a new version reuses
/// what was already parsed (see [`DataFile::reuse`]).
pub fn reuse_index(previous: &[Arc<DataFile>]) -> HashMap<&str, &Arc<DataFile>> {
    previous.iter().map(|f| (f.path.as_str(), f)).collect()
}


#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn layout_keeps_contract_order_and_query_types() {
        for kind in TableKind::ALL {
            let layout = Layout::new(kind);
            let names: Vec<&String> = layout.schema.fields().iter().map(|f| f.name()).collect();
            let contract = kind.schema();
            let expected: Vec<&String> = contract.fields().iter().map(|f| f.name()).collect();
            assert_eq!(names, expected, "{kind:?}");
            assert_eq!(layout.schema.field_with_name("tenant").unwrap().data_type(), &partition_type());
            assert_eq!(layout.schema.field_with_name("date").unwrap().data_type(), &partition_type());
            assert_eq!(layout.schema.field_with_name("poller").unwrap().data_type(), &DataType::Utf8);
            for (i, f) in layout.schema.fields().iter().enumerate() {
                let j = layout.source_index[i];
                let source = if j < layout.file_schema.fields().len() {
                    layout.file_schema.field(j).clone()
                } else {
                    layout.partition_fields[j - layout.file_schema.fields().len()].as_ref().clone()
                };
                assert_eq!(source, *f.as_ref());
            }
        }
    }

    #[test]
    fn timestamp_upper_bounds_cover_the_truncated_millisecond() {
        let ty = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let v = serde_json::json!("2026-11-24T13:06:18.672Z");
        let lo = stat_value(&ty, &v, false).unwrap();
        let hi = stat_value(&ty, &v, true).unwrap();
        assert_eq!(lo, ScalarValue::TimestampMicrosecond(Some(1_795_525_578_672_000), Some("UTC".into())));
        assert_eq!(hi, ScalarValue::TimestampMicrosecond(Some(1_795_525_578_672_999), Some("UTC".into())));
        assert_eq!(stat_value(&DataType::Int32, &serde_json::json!(1i64 << 40), false), None);
        assert_eq!(stat_value(&DataType::Utf8, &serde_json::json!(3), false), None);
    }

    /// A file of `events` for tenant `t` whose `time` and `node` lie in the
    /// given ranges; `None` bounds are unknown statistics.
    pub(crate) fn file(t: &str, time: Option<(i64, i64)>, node: Option<(&str, &str)>) -> Arc<DataFile> {
        let layout = layout(TableKind::Events);
        let cols = layout.file_schema.fields();
        let mut min: Vec<ScalarValue> = cols.iter().map(|c| ScalarValue::try_from(c.data_type()).unwrap()).collect();
        let mut max = min.clone();
        let ts = |v| ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into()));
        if let Some((lo, hi)) = time {
            let i = layout.file_schema.index_of("time").unwrap();
            (min[i], max[i]) = (ts(lo), ts(hi));
        }
        if let Some((lo, hi)) = node {
            let i = layout.file_schema.index_of("node").unwrap();
            (min[i], max[i]) = (ScalarValue::Utf8(Some(lo.into())), ScalarValue::Utf8(Some(hi.into())));
        }
        let path = format!("tenant={t}/date=2026-11-24/{}.parquet", uuid::Uuid::new_v4());
        Arc::new(DataFile {
            file: PartitionedFile::new(path.clone(), 1000)
                .with_partition_values(vec![partition_value(t), partition_value("2026-11-24")]),
            path,
            tenant: t.into(),
            rows: Some(10),
            nulls: vec![Some(0); cols.len()],
            min,
            max,
        })
    }

    #[tokio::test]
    async fn pruning_keeps_every_file_that_may_match() {
        use deltalake::datafusion::prelude::{SessionContext, col, lit};
        const H: i64 = 3_600_000_000;
        let files = vec![
            file("a", Some((0, H)), Some(("n1", "n5"))),
            file("a", Some((2 * H, 3 * H)), Some(("n6", "n9"))),
            file("b", Some((2 * H, 3 * H)), None),
            file("b", None, Some(("n1", "n9"))),
        ];
        let table = EstateTable::new(layout(TableKind::Events), None, files);
        let state = SessionContext::new().state();
        let kept = |filter: Expr| -> Vec<usize> {
            let kept = table.prune(&state, &[filter]);
            table.files.iter().enumerate().filter(|(_, f)| kept.iter().any(|k| Arc::ptr_eq(k, f))).map(|(i, _)| i).collect()
        };
        let ts = |v| lit(ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into())));
        // Unknown statistics never prune.
        assert_eq!(kept(col("time").gt_eq(ts(2 * H))), vec![1, 2, 3]);
        assert_eq!(kept(col("time").lt(ts(H / 2))), vec![0, 3]);
        // Bounds are inclusive.
        assert_eq!(kept(col("time").eq(ts(H))), vec![0, 3]);
        assert_eq!(kept(col("node").eq(lit("n7"))), vec![1, 2, 3]);
        assert_eq!(kept(col("node").eq(lit("n7")).and(col("time").lt(ts(H)))), vec![3]);
        // Partition values prune like any column.
        assert_eq!(kept(col("tenant").eq(lit("b"))), vec![2, 3]);
        assert_eq!(kept(col("tenant").eq(lit("c"))), Vec::<usize>::new());
        // Predicates the statistics cannot judge keep every file.
        assert_eq!(kept(col("details").like(lit("%x%"))), vec![0, 1, 2, 3]);
    }

    #[test]
    fn refuses_tables_it_would_read_wrongly() {
        let layout = Layout::new(TableKind::Events);
        let meta = serde_json::json!({"partitionColumns": ["tenant", "date"]});
        assert!(layout.check_table(&serde_json::json!({"minReaderVersion": 1}), &meta).is_ok());
        let dv = serde_json::json!({"minReaderVersion": 3, "readerFeatures": ["deletionVectors"]});
        assert!(layout.check_table(&dv, &meta).unwrap_err().contains("deletionVectors"));
        let cm = serde_json::json!({"minReaderVersion": 2});
        assert!(layout.check_table(&cm, &meta).unwrap_err().contains("protocol 2"));
        let other = serde_json::json!({"partitionColumns": ["date"]});
        assert!(layout.check_table(&serde_json::json!({"minReaderVersion": 1}), &other).is_err());
        assert!(layout.check_table(&serde_json::json!({}), &meta).is_err());
    }
}
