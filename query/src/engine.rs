//! Running one query: admission, planning, the read-only check, execution
//! under the time, row and memory limits, and the scan statistics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::datafusion::datasource::physical_plan::FileScanConfig;
use deltalake::datafusion::datasource::source::DataSourceExec;
use deltalake::datafusion::common::tree_node::TreeNode;
use deltalake::datafusion::execution::context::SQLOptions;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::physical_plan::{ExecutionPlan, execute_stream};
use deltalake::datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Principal;
use crate::catalog::{AsOf, Catalog, Snapshots};
use crate::error::{Error, Result};
use crate::guard;
use crate::metrics::Metrics;
use crate::session::SessionFactory;
use estate_ingest::TableKind;

/// Limits every query runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock limit from admission to the last row.
    pub timeout: Duration,
    /// Most rows in one answer.
    pub max_rows: usize,
    /// Concurrent queries per tenant (operators share one budget).
    pub per_tenant: usize,
    /// How long a query may wait for a slot.
    pub queue_timeout: Duration,
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    /// Result schema.
    pub schema: SchemaRef,
    /// Result rows.
    pub batches: Vec<RecordBatch>,
    /// Row count.
    pub rows: usize,
}

impl Answer {
    /// The answer with dictionaries expanded and string/binary views as
    /// plain strings/binaries: the types every Arrow client reads.
    pub fn plain(&self) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let schema = plain_schema(&self.schema);
        let batches = self.batches.iter().map(|b| plain_batch(b, &schema)).collect::<Result<Vec<_>>>()?;
        Ok((schema, batches))
    }
}

fn plain_type(t: &DataType) -> DataType {
    match t {
        DataType::Dictionary(_, v) => plain_type(v),
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    }
}

/// The schema with dictionaries and views replaced by plain types.
pub fn plain_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(plain_type(f.data_type())))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn plain_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("converting the answer: {e}")))?;
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Internal(format!("converting the answer: {e}")))
}

/// A planned, not yet executed query.
pub struct Planned {
    ctx: SessionContext,
    df: DataFrame,
    tables: Vec<TableKind>,
    snapshots: Snapshots,
}

impl std::fmt::Debug for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planned").field("tables", &self.tables).finish_non_exhaustive()
    }
}

impl Planned {
    /// The schema the answer will have.
    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }
}

/// The query engine shared by the HTTP and Flight SQL front ends.
#[derive(Debug)]
pub struct Engine {
    catalog: Arc<Catalog>,
    sessions: SessionFactory,
    limits: Limits,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Engine {
    /// An engine over `catalog`.
    pub fn new(catalog: Arc<Catalog>, sessions: SessionFactory, limits: Limits, metrics: Arc<Metrics>) -> Engine {
        Engine { catalog, sessions, limits, slots: Mutex::new(HashMap::new()), metrics }
    }

    /// The store root (for redaction).
    pub fn root(&self) -> &str {
        self.catalog.root()
    }

    /// A session for `principal` on the current snapshots, for catalog browsing.
    pub async fn session(&self, principal: &Principal) -> Result<SessionContext> {
        let snapshots = self.catalog.snapshots();
        self.sessions
            .session(principal, &snapshots)
            .await
            .map_err(|e| Error::from_datafusion(e, self.root()))
    }

    async fn admit(&self, principal: &Principal) -> Result<OwnedSemaphorePermit> {
        let sem = {
            let mut slots = self.slots.lock().expect("slots lock");
            slots
                .entry(principal.scope().to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_tenant)))
                .clone()
        };
        match tokio::time::timeout(self.limits.queue_timeout, sem.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::Busy),
        }
    }

    /// Parses, checks and plans `sql` for `principal` on the current snapshots.
    pub async fn plan(&self, principal: &Principal, sql: &str) -> Result<Planned> {
        self.plan_at(principal, sql, None).await
    }

    /// Like [`Engine::plan`], on the snapshots as of `as_of` when given.
    pub async fn plan_at(&self, principal: &Principal, sql: &str, as_of: Option<&AsOf>) -> Result<Planned> {
        let statement = guard::check(sql)?;
        let snapshots = match as_of {
            None => self.catalog.snapshots(),
            Some(a) => self.catalog.snapshots_as_of(a).await?,
        };
        let df_err = |e| Error::from_datafusion(e, self.root());
        let ctx = self.sessions.session_for(principal, &snapshots, &statement).await.map_err(df_err)?;
        let plan = ctx.state().statement_to_plan(statement).await.map_err(df_err)?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| Error::Forbidden(crate::error::redact(&e.strip_backtrace(), self.root())))?;
        let tables = referenced_tables(&plan);
        let is_query = !matches!(
            plan,
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_) | LogicalPlan::DescribeTable(_)
        );
        let mut df = ctx.execute_logical_plan(plan).await.map_err(df_err)?;
        if is_query {
            // One row past the limit tells "exactly at the limit" from "over it"
            // without computing the whole answer.
            df = df.limit(0, Some(self.limits.max_rows + 1)).map_err(df_err)?;
        }
        Ok(Planned { ctx, df, tables, snapshots })
    }

    /// Runs `sql` for `principal` under every limit. `interface` labels metrics.
    pub async fn execute(&self, principal: &Principal, sql: &str, interface: &'static str) -> Result<Answer> {
        self.execute_at(principal, sql, None, interface).await
    }

    /// Like [`Engine::execute`], on the snapshots as of `as_of` when given.
    pub async fn execute_at(&self, principal: &Principal, sql: &str, as_of: Option<&AsOf>, interface: &'static str) -> Result<Answer> {
        let started = Instant::now();
        let result = async {
            let _permit = self.admit(principal).await?;
            self.metrics.running.inc();
            let run = tokio::time::timeout(self.limits.timeout, async {
                let planned = self.plan_at(principal, sql, as_of).await?;
                self.run(principal, planned).await
            })
            .await;
            self.metrics.running.dec();
            run.unwrap_or(Err(Error::Timeout(self.limits.timeout)))
        }
        .await;
        let status = match &result {
            Ok(_) => "ok",
            Err(e) => e.status_label(),
        };
        self.metrics.query_done(interface, status);
        self.metrics.latency.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(a) => {
                self.metrics.rows.inc_by(a.rows as u64);
                tracing::debug!(tenant = principal.label(), rows = a.rows, ms = started.elapsed().as_millis() as u64, "query ok");
            }
            Err(e) => tracing::info!(tenant = principal.label(), status, error = %e, "query failed"),
        }
        result
    }

    /// Executes a planned query under the row and memory limits.
    async fn run(&self, principal: &Principal, planned: Planned) -> Result<Answer> {
        let df_err = |e| Error::from_datafusion(e, self.root());
        let Planned { ctx, df, tables, snapshots } = planned;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let physical = df.create_physical_plan().await.map_err(df_err)?;
        let mut stream = execute_stream(physical.clone(), ctx.task_ctx()).map_err(df_err)?;
        let mut batches = Vec::new();
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(df_err)?;
            rows += batch.num_rows();
            if rows > self.limits.max_rows {
                return Err(Error::TooManyRows(self.limits.max_rows));
            }
            batches.push(batch);
        }
        let stats = scan_stats(&physical);
        let visible: usize = tables
            .iter()
            .filter_map(|k| snapshots.get(*k))
            .map(|p| p.visible_files(principal))
            .sum();
        self.metrics.files_scanned.inc_by(stats.files as u64);
        self.metrics.files_pruned.inc_by(visible.saturating_sub(stats.files) as u64);
        self.metrics.bytes_scanned.inc_by(stats.bytes as u64);
        Ok(Answer { schema, batches, rows })
    }
}

/// What the scans of one plan read.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanStats {
    /// Data files in the scans.
    pub files: usize,
    /// Bytes read by the scans.
    pub bytes: usize,
}

/// Sums files and bytes over every file scan in an executed plan.
pub fn scan_stats(plan: &Arc<dyn ExecutionPlan>) -> ScanStats {
    let mut s = ScanStats::default();
    walk(plan, &mut s);
    s
}

fn walk(plan: &Arc<dyn ExecutionPlan>, s: &mut ScanStats) {
    if let Some(ds) = plan.downcast_ref::<DataSourceExec>()
        && let Some(cfg) = ds.data_source().downcast_ref::<FileScanConfig>()
    {
        s.files += cfg.file_groups.iter().map(|g| g.len()).sum::<usize>();
        if let Some(m) = plan.metrics()
            && let Some(b) = m.sum_by_name("bytes_scanned")
        {
            s.bytes += b.as_usize();
        }
    }
    for child in plan.children() {
        walk(child, s);
    }
}

/// The base tables a plan reads, with views expanded to their sources.
fn referenced_tables(plan: &LogicalPlan) -> Vec<TableKind> {
    let mut out = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let deps: &[TableKind] = match scan.table_name.table() {
                "events" => &[TableKind::Events],
                "node_snapshots" | "nodes" => &[TableKind::Nodes],
                "heartbeats" => &[TableKind::Heartbeats],
                "receipts" => &[TableKind::Receipts],
                "active_events" => &[TableKind::Events],
                "pollers" => &[TableKind::Heartbeats, TableKind::Events],
                "loss_audit" => &[TableKind::Receipts, TableKind::Heartbeats],
                _ => &[],
            };
            for d in deps {
                if !out.contains(d) {
                    out.push(*d);
                }
            }
        }
        Ok(deltalake::datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    out
}
