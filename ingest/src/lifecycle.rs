//! Storage lifecycle: compaction, retention, vacuum and log hygiene, run
//! beside live ingest (`estate compact`, or inside ingest/standalone).
//!
//! Safety rests on Delta's snapshot isolation, with three rules of ours:
//! - **One partition per commit.** Compaction rewrites one (tenant, date)
//!   partition per OPTIMIZE commit, so a crash loses at most one partition's
//!   work and the next pass simply finds that partition still fragmented.
//!   Ingest only appends; an append never conflicts with a compaction commit,
//!   and a compaction that loses a race is retried by delta-rs or left for the
//!   next pass. Rows are neither lost nor doubled: the commit removes exactly
//!   the files it rewrote.
//! - **Readers keep their files.** A query reads a pinned snapshot; files that
//!   compaction or retention removes from the log stay on storage until
//!   VACUUM, which deletes only files unreferenced for longer than
//!   `--vacuum-retention` (default 7 days). That window is also how far back
//!   time travel (`as_of`) can read, so it must exceed the longest query.
//! - **Retention drops whole partitions.** A tenant's `date` partitions older
//!   than its retention are removed with a partition-only predicate: no data
//!   file is rewritten, and nothing of another tenant is touched.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, Utc};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::{DeltaTable, FilterOp, FilterValue};
use serde::Deserialize;

use crate::config::{parse_bytes, parse_duration, parse_kv};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::table::{TableKind, writer_properties};

/// Options of `estate compact` (and of the compactor inside ingest).
#[derive(Debug, Clone, clap::Args)]
pub struct CompactArgs {
    /// Store root: `file:///abs/path`, a local path, `s3://bucket/prefix` or `memory://`.
    #[arg(long, env = "ESTATE_STORE")]
    pub store: String,

    /// Object store setting passed through, e.g. `aws_endpoint=http://127.0.0.1:9000` (repeatable).
    #[arg(long = "store-opt", env = "ESTATE_STORE_OPTS", value_parser = parse_kv, value_delimiter = ';', hide_env_values = true)]
    pub store_opts: Vec<(String, String)>,

    /// Files are merged toward this size.
    #[arg(long, env = "ESTATE_COMPACT_TARGET_SIZE", default_value = "128MiB", value_parser = parse_bytes)]
    pub target_size: usize,

    /// A (tenant, date) partition is compacted once it has at least this many
    /// files smaller than half the target size.
    #[arg(long, env = "ESTATE_COMPACT_MIN_FILES", default_value_t = 8)]
    pub min_files: usize,

    /// Data older than this (by its `date` partition) is removed; per-tenant
    /// overrides come from `--retention-file`. `0s` keeps everything.
    #[arg(long, env = "ESTATE_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,

    /// TOML file of per-tenant retention overrides:
    /// `[tenants]` then `acme = "90d"`.
    #[arg(long, env = "ESTATE_RETENTION_FILE")]
    pub retention_file: Option<PathBuf>,

    /// Files no longer referenced are deleted only after this long. It bounds
    /// time travel and must exceed the longest query.
    #[arg(long, env = "ESTATE_VACUUM_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub vacuum_retention: Duration,

    /// Write a checkpoint once this many commits have followed the last one,
    /// and remove log entries older than `--vacuum-retention` behind it.
    #[arg(long, env = "ESTATE_CHECKPOINT_EVERY", default_value_t = 100)]
    pub checkpoint_every: u64,

    /// Run a pass this often, until stopped; without it, run one pass and exit.
    #[arg(long, env = "ESTATE_COMPACT_INTERVAL", value_parser = parse_duration)]
    pub interval: Option<Duration>,
}

/// Per-tenant retention overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionFile {
    #[serde(default)]
    tenants: BTreeMap<String, String>,
}

/// Retention policy: a default and per-tenant overrides (zero = keep).
#[derive(Debug, Clone)]
pub struct Retention {
    default: Duration,
    tenants: HashMap<String, Duration>,
}

impl Retention {
    /// Builds the policy from the options, reading the overrides file.
    pub fn load(default: Duration, file: Option<&std::path::Path>) -> Result<Retention> {
        let mut tenants = HashMap::new();
        if let Some(p) = file {
            let text = std::fs::read_to_string(p)
                .map_err(|source| Error::Io { what: format!("reading retention file {}", p.display()), source })?;
            let f: RetentionFile =
                toml::from_str(&text).map_err(|e| Error::Config(format!("retention file {}: {e}", p.display())))?;
            for (t, d) in f.tenants {
                if !estate_schemas::is_valid_tenant(&t) {
                    return Err(Error::Config(format!("retention file {}: invalid tenant id {t:?}", p.display())));
                }
                let d = parse_duration(&d).map_err(|e| Error::Config(format!("retention file {}: {t}: {e}", p.display())))?;
                tenants.insert(t, d);
            }
        }
        Ok(Retention { default, tenants })
    }

    /// The oldest date a tenant keeps, `None` to keep everything.
    pub fn keep_from(&self, tenant: &str, today: NaiveDate) -> Option<NaiveDate> {
        let d = self.tenants.get(tenant).copied().unwrap_or(self.default);
        if d.is_zero() {
            return None;
        }
        let days = d.as_secs().div_ceil(86_400) as i64;
        today.checked_sub_signed(chrono::TimeDelta::days(days - 1))
    }
}

/// What one pass did, per table and in total.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PassReport {
    /// Active files before the pass.
    pub files_before: usize,
    /// Active files after the pass.
    pub files_after: usize,
    /// Partitions compacted.
    pub partitions_compacted: usize,
    /// Bytes read and rewritten by compaction.
    pub bytes_rewritten: u64,
    /// (tenant, date) partitions removed by retention.
    pub partitions_expired: usize,
    /// Files deleted from storage by vacuum.
    pub files_vacuumed: usize,
    /// Checkpoints written.
    pub checkpoints: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl PassReport {
    fn add(&mut self, o: &PassReport) {
        self.files_before += o.files_before;
        self.files_after += o.files_after;
        self.partitions_compacted += o.partitions_compacted;
        self.bytes_rewritten += o.bytes_rewritten;
        self.partitions_expired += o.partitions_expired;
        self.files_vacuumed += o.files_vacuumed;
        self.checkpoints += o.checkpoints;
    }
}

/// The compactor of one store.
#[derive(Debug)]
pub struct Compactor {
    store: Store,
    args: CompactArgs,
    retention: Retention,
}

/// A (tenant, date) partition's small files.
#[derive(Debug, Default)]
struct PartitionFiles {
    files: usize,
    small: usize,
    small_bytes: u64,
}

impl Compactor {
    /// Opens the store and reads the retention overrides.
    pub fn new(args: CompactArgs) -> Result<Compactor> {
        if args.min_files < 2 {
            return Err(Error::Config("--min-files must be at least 2".into()));
        }
        if args.target_size < 1 << 20 {
            return Err(Error::Config("--target-size must be at least 1MiB".into()));
        }
        let retention = Retention::load(args.retention, args.retention_file.as_deref())?;
        let store = Store::open(&args.store, args.store_opts.iter().cloned().collect(), None)?;
        Ok(Compactor { store, args, retention })
    }

    /// Runs passes every `--interval` until `shutdown`, or one pass.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<PassReport> {
        let Some(every) = self.args.interval else {
            return self.pass().await;
        };
        tokio::pin!(shutdown);
        let mut last = PassReport::default();
        loop {
            match self.pass().await {
                Ok(r) => last = r,
                Err(e) => tracing::error!(error = %e, "compaction pass failed; retrying next interval"),
            }
            tokio::select! {
                () = &mut shutdown => return Ok(last),
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One pass over every table: retention, compaction, vacuum, checkpoint.
    pub async fn pass(&self) -> Result<PassReport> {
        let started = Instant::now();
        let mut total = PassReport::default();
        for kind in TableKind::ALL {
            let r = self.pass_table(kind).await?;
            if r.files_before > 0 {
                tracing::info!(table = kind.name(), files_before = r.files_before, files_after = r.files_after,
                    compacted = r.partitions_compacted, bytes_rewritten = r.bytes_rewritten,
                    expired = r.partitions_expired, vacuumed = r.files_vacuumed, "table maintained");
            }
            total.add(&r);
        }
        total.seconds = started.elapsed().as_secs_f64();
        Ok(total)
    }

    async fn load(&self, kind: TableKind) -> Result<Option<DeltaTable>> {
        let mut table = self.store.table(kind.name())?;
        match table.load().await {
            Ok(()) => Ok(Some(table)),
            Err(deltalake::DeltaTableError::NotATable(_)) => Ok(None),
            // A table ingest has not created yet.
            Err(e) if ["Not a Delta table", "Path does not exist", "No files in log segment"].iter().any(|m| e.to_string().contains(m)) => Ok(None),
            Err(e) => Err(Error::delta(kind.name())(e)),
        }
    }

    async fn pass_table(&self, kind: TableKind) -> Result<PassReport> {
        let name = kind.name();
        let mut r = PassReport::default();
        let Some(table) = self.load(kind).await? else { return Ok(r) };
        let parts = partitions(&table, self.args.target_size as u64 / 2, name)?;
        r.files_before = parts.values().map(|p| p.files).sum();

        // 1. Retention: whole (tenant, date) partitions, one commit per tenant.
        let today = Utc::now().date_naive();
        let mut expire: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tenant, date) in parts.keys() {
            let Some(keep_from) = self.retention.keep_from(tenant, today) else { continue };
            if NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok_and(|d| d < keep_from) {
                expire.entry(tenant.as_str()).or_default().push(date.as_str());
            }
        }
        let mut table = table;
        for (tenant, dates) in &expire {
            let pred = format!(
                "tenant = '{}' AND date IN ({})",
                tenant,
                dates.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")
            );
            let (t, m) = table
                .delete()
                .with_predicate(pred)
                .with_commit_properties(CommitProperties::default().with_create_checkpoint(false))
                .await
                .map_err(Error::delta(name))?;
            table = t;
            r.partitions_expired += dates.len();
            tracing::info!(table = name, tenant, dates = ?dates, files_removed = m.num_removed_files, "retention: partitions expired");
        }

        // 2. Compaction: one (tenant, date) partition per commit.
        for ((tenant, date), p) in &parts {
            if p.small < self.args.min_files || expire.get(tenant.as_str()).is_some_and(|d| d.contains(&date.as_str())) {
                continue;
            }
            let filters = [("tenant", FilterOp::Eq, FilterValue::Scalar(tenant)), ("date", FilterOp::Eq, FilterValue::Scalar(date))];
            let target = NonZeroU64::new(self.args.target_size as u64).expect("checked at start");
            let (t, m) = table
                .optimize()
                .with_filters(&filters)
                .with_target_size(target)
                .with_max_concurrent_tasks(1)
                .with_writer_properties(writer_properties(kind))
                .with_commit_properties(CommitProperties::default().with_create_checkpoint(false))
                .await
                .map_err(Error::delta(name))?;
            table = t;
            r.partitions_compacted += 1;
            r.bytes_rewritten += m.files_removed.total_size.max(0) as u64;
            tracing::debug!(table = name, tenant, date, removed = m.num_files_removed, added = m.num_files_added, "partition compacted");
        }

        // 3. Vacuum files unreferenced for longer than the safety delay.
        let retention_hours = (self.args.vacuum_retention.as_secs() / 3600) as i64;
        let (t, vm) = table
            .vacuum()
            .with_retention_period(chrono::Duration::seconds(self.args.vacuum_retention.as_secs() as i64))
            .with_enforce_retention_duration(retention_hours >= 168)
            .await
            .map_err(Error::delta(name))?;
        table = t;
        r.files_vacuumed = vm.files_deleted.len();

        // 4. Checkpoint and log hygiene.
        let version = table.version().unwrap_or(0);
        let newest = crate::checkpoint::last_checkpoint_version(table.log_store().as_ref()).await;
        if self.args.checkpoint_every > 0 && crate::checkpoint::commits_past_checkpoint(version, newest) >= self.args.checkpoint_every {
            deltalake::checkpoints::create_checkpoint(&table, None).await.map_err(Error::delta(name))?;
            r.checkpoints += 1;
            let cutoff = Utc::now().timestamp_millis() - self.args.vacuum_retention.as_millis() as i64;
            match deltalake::checkpoints::cleanup_expired_logs_for(version, table.log_store().as_ref(), cutoff, None).await {
                Ok(n) if n > 0 => tracing::info!(table = name, removed = n, "expired log entries removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(table = name, error = %e, "removing expired log entries failed"),
            }
        }
        r.files_after = table.snapshot().map(|s| s.log_data().num_files()).unwrap_or(0);
        Ok(r)
    }
}

/// Active files per (tenant, date), counting those below `small_below` bytes.
fn partitions(table: &DeltaTable, small_below: u64, name: &'static str) -> Result<BTreeMap<(String, String), PartitionFiles>> {
    let snap = table.snapshot().map_err(Error::delta(name))?;
    let mut out: BTreeMap<(String, String), PartitionFiles> = BTreeMap::new();
    for f in snap.log_data().iter() {
        let mut pv = f.partition_values_map();
        let tenant = pv.remove("tenant").flatten().unwrap_or_default();
        let date = pv.remove("date").flatten().unwrap_or_default();
        let e = out.entry((tenant, date)).or_default();
        e.files += 1;
        let size = f.size().max(0) as u64;
        if size < small_below {
            e.small += 1;
            e.small_bytes += size;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_whole_days() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        let r = Retention { default: Duration::from_secs(30 * 86_400), tenants: HashMap::from([("keep".into(), Duration::ZERO), ("short".into(), Duration::from_secs(86_400))]) };
        assert_eq!(r.keep_from("acme", today), NaiveDate::from_ymd_opt(2026, 10, 26));
        assert_eq!(r.keep_from("keep", today), None);
        assert_eq!(r.keep_from("short", today), Some(today));
    }

    #[test]
    fn retention_file_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "[tenants]\nacme = \"90d\"\n").unwrap();
        let r = Retention::load(Duration::from_secs(86_400), Some(&p)).unwrap();
        assert_eq!(r.tenants["acme"], Duration::from_secs(90 * 86_400));
        std::fs::write(&p, "[tenants]\n\"../x\" = \"1d\"\n").unwrap();
        assert!(Retention::load(Duration::ZERO, Some(&p)).unwrap_err().to_string().contains("invalid tenant"));
        std::fs::write(&p, "[tenant]\nacme = \"1d\"\n").unwrap();
        assert!(Retention::load(Duration::ZERO, Some(&p)).is_err());
        std::fs::write(&p, "[tenants]\nacme = \"soon\"\n").unwrap();
        assert!(Retention::load(Duration::ZERO, Some(&p)).is_err());
    }
}
