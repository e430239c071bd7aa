//! Store URLs and Delta table handles.
//!
//! One root object store per process, shared by the four tables, so that
//! `memory://` works across tables and a test wrapper (see [`crate::faults`])
//! applies to every read and write.

use std::collections::HashMap;
use std::num::NonZero;
use std::sync::{Arc, Once};

use buoyant_kernel::Engine;
use buoyant_kernel_engine::DefaultEngineBuilder;
use buoyant_kernel_engine::executor::tokio::{TokioBackgroundExecutor, TokioMultiThreadExecutor};
use bytes::Bytes;
use deltalake::datafusion::execution::object_store::ObjectStoreUrl;
use deltalake::kernel::Version;
use deltalake::kernel::transaction::TransactionError;
use deltalake::logstore::{CommitOrBytes, LogStore, LogStoreConfig, LogStoreRef, StorageConfig, object_store_factories};
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore, Path};
use tokio::runtime::{Handle, RuntimeFlavor};
use url::Url;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::faults::{FaultSpec, FaultyStore};

/// The store root: where the Delta tables live.
#[derive(Debug, Clone)]
pub struct Store {
    url: Url,
    root: Arc<dyn ObjectStore>,
    options: HashMap<String, String>,
}

/// Parses a store location: `file:///abs/path`, a plain path (made absolute),
/// `s3://bucket/prefix` or `memory://`. The result always ends in `/`.
pub fn parse_store_url(s: &str) -> Result<Url> {
    let mut url = if s.contains("://") {
        Url::parse(s).map_err(|e| Error::Config(format!("store URL {s:?}: {e}")))?
    } else {
        let path = std::path::absolute(s).map_err(|source| Error::Io {
            what: format!("resolving store path {s:?}"),
            source,
        })?;
        Url::from_directory_path(&path)
            .map_err(|_| Error::Config(format!("store path {s:?} is not a usable directory path")))?
    };
    match url.scheme() {
        "file" | "memory" | "s3" | "s3a" => {}
        other => {
            return Err(Error::Config(format!(
                "store URL scheme {other:?} is not supported (file://, s3://, memory://)"
            )));
        }
    }
    if url.scheme() == "memory" && url.path().is_empty() {
        url.set_path("/");
    }
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    Ok(url)
}

static REGISTER: Once = Once::new();

impl Store {
    /// Opens the store root. `options` are object store settings (for S3:
    /// `aws_endpoint`, `aws_region`, `aws_allow_http`, …; the usual `AWS_*`
    /// environment variables apply as well). `faults` wraps the store in the
    /// test-only fault injector.
    pub fn open(
        location: &str,
        options: HashMap<String, String>,
        faults: Option<FaultSpec>,
    ) -> Result<Store> {
        REGISTER.call_once(|| deltalake::aws::register_handlers(None));
        let url = parse_store_url(location)?;
        if url.scheme() == "file" {
            let path = url
                .to_file_path()
                .map_err(|_| Error::Config(format!("store URL {url} is not a local path")))?;
            std::fs::create_dir_all(&path).map_err(|source| Error::Io {
                what: format!("creating store directory {}", path.display()),
                source,
            })?;
        }
        let store_err = |source: DeltaTableError| Error::Store { url: url.to_string(), source };
        let scheme = Url::parse(&format!("{}://", url.scheme())).expect("scheme URL");
        let factory = object_store_factories()
            .get(&scheme)
            .map(|f| f.value().clone())
            .ok_or_else(|| Error::Config(format!("no object store for {scheme}")))?;
        let config = StorageConfig::parse_options(options.clone()).map_err(store_err)?;
        let (root, _prefix) = factory.parse_url_opts(&url, &config).map_err(store_err)?;
        let root: Arc<dyn ObjectStore> = match faults {
            Some(spec) => Arc::new(FaultyStore::new(root, spec)),
            None => root,
        };
        Ok(Store { url, root, options })
    }

    /// The root URL (ends in `/`).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL of one table.
    pub fn table_url(&self, table: &str) -> Url {
        self.url.join(&format!("{table}/")).expect("table name is a valid path segment")
    }

    /// A log store for one table on the shared root store, reading the log
    /// through `BoundedLogReads`.
    pub fn log_store(&self, table: &str) -> Result<LogStoreRef> {
        let inner = self
            .builder(table)?
            .build_storage()
            .map_err(|source| Error::Store { url: self.table_url(table).to_string(), source })?;
        Ok(Arc::new(BoundedLogReads { inner }))
    }

    /// An unloaded table handle.
    pub fn table(&self, table: &str) -> Result<DeltaTable> {
        Ok(DeltaTable::new(self.log_store(table)?))
    }

    fn builder(&self, table: &str) -> Result<DeltaTableBuilder> {
        let url = self.table_url(table);
        Ok(DeltaTableBuilder::from_url(url.clone())
            .map_err(|source| Error::Store { url: url.to_string(), source })?
            .with_storage_options(self.options.clone())
            .with_storage_backend(self.root.clone(), url))
    }
}

/// Log files delta-rs's kernel reads at once when it loads or brings forward
/// a snapshot (its default: 1,000).
const LOG_READ_FILES: NonZero<usize> = NonZero::new(16).expect("non-zero");

/// Rows per batch when the kernel reads log files (its default: 1,000).
const LOG_READ_ROWS: NonZero<usize> = NonZero::new(256).expect("non-zero");

/// delta-rs's log store with the kernel's reads of the log bounded.
///
/// The kernel reads every JSON commit file after the last checkpoint
/// through its own decoder, up to 1,000 files at once, and sizes each
/// decoder's buffers for a batch of 1,000 rows of the whole log schema
/// (about 2 MB each) even for a commit of ten lines. Loading a snapshot 100
/// commits past its checkpoint, as each background checkpoint does, took
/// about 400 MB for an instant (measured with heaptrack in the 20-minute
/// soak). Those spikes, on whichever thread ran them, left the allocator
/// holding more memory after each, and RSS rose through the soak (see
/// docs/reliability.md). 16 files at once and 256 rows per batch bound a
/// read at a few MB; commit files are small, so this costs little time.
///
/// Everything else is delta-rs's own log store, unchanged: the name too,
/// which the sinks use to decide whether they may write their own commits.
#[derive(Debug)]
pub(crate) struct BoundedLogReads {
    inner: LogStoreRef,
}

#[async_trait::async_trait]
impl LogStore for BoundedLogReads {
    fn name(&self) -> String {
        self.inner.name()
    }

    async fn refresh(&self) -> DeltaResult<()> {
        self.inner.refresh().await
    }

    async fn read_commit_entry(&self, version: Version) -> DeltaResult<Option<Bytes>> {
        self.inner.read_commit_entry(version).await
    }

    async fn write_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> std::result::Result<(), TransactionError> {
        self.inner.write_commit_entry(version, commit_or_bytes, operation_id).await
    }

    async fn abort_commit_entry(
        &self,
        version: Version,
        commit_or_bytes: CommitOrBytes,
        operation_id: Uuid,
    ) -> std::result::Result<(), TransactionError> {
        self.inner.abort_commit_entry(version, commit_or_bytes, operation_id).await
    }

    async fn get_latest_version(&self, start_version: Version) -> DeltaResult<Version> {
        self.inner.get_latest_version(start_version).await
    }

    fn object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.object_store(operation_id)
    }

    fn root_object_store(&self, operation_id: Option<Uuid>) -> Arc<dyn ObjectStore> {
        self.inner.root_object_store(operation_id)
    }

    fn engine(&self, operation_id: Option<Uuid>) -> Arc<dyn Engine> {
        let builder = DefaultEngineBuilder::new(self.root_object_store(operation_id))
            .with_buffer_size(LOG_READ_FILES)
            .with_batch_size(LOG_READ_ROWS);
        // As delta-rs picks the executor: tasks on the caller's runtime when
        // it has worker threads, else a background runtime of the kernel's.
        match Handle::try_current().map(|h| (h.runtime_flavor(), h)) {
            Ok((RuntimeFlavor::MultiThread, h)) => {
                Arc::new(builder.with_task_executor(Arc::new(TokioMultiThreadExecutor::new(h))).build())
            }
            _ => Arc::new(builder.with_task_executor(Arc::new(TokioBackgroundExecutor::new())).build()),
        }
    }

    fn to_uri(&self, location: &Path) -> String {
        self.inner.to_uri(location)
    }

    fn root_url(&self) -> &Url {
        self.inner.root_url()
    }

    fn log_path(&self) -> &Path {
        self.inner.log_path()
    }

    fn transaction_url(&self, operation_id: Option<Uuid>) -> DeltaResult<Url> {
        self.inner.transaction_url(operation_id)
    }

    async fn is_delta_table_location(&self) -> DeltaResult<bool> {
        self.inner.is_delta_table_location().await
    }

    fn config(&self) -> &LogStoreConfig {
        self.inner.config()
    }

    fn object_store_url(&self) -> ObjectStoreUrl {
        self.inner.object_store_url()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!(parse_store_url("memory://").unwrap().as_str(), "memory:///");
        assert_eq!(parse_store_url("file:///data/x").unwrap().as_str(), "file:///data/x/");
        assert_eq!(parse_store_url("s3://b/p").unwrap().as_str(), "s3://b/p/");
        assert!(parse_store_url("/tmp/abc").unwrap().as_str().starts_with("file:///tmp/abc"));
        let err = parse_store_url("ftp://x/y").unwrap_err().to_string();
        assert!(err.contains("not supported"), "{err}");
    }
}
