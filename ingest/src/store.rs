//! Store URLs and Delta table handles.
//!
//! One root object store per process, shared by the four tables, so that
//! `memory://` works across tables and a test wrapper (see [`crate::faults`])
//! applies to every read and write.

use std::collections::HashMap;
use std::sync::{Arc, Once};

use deltalake::logstore::{LogStoreRef, StorageConfig, object_store_factories};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore};
use url::Url;

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

    /// A log store for one table on the shared root store.
    pub fn log_store(&self, table: &str) -> Result<LogStoreRef> {
        self.builder(table)?
            .build_storage()
            .map_err(|source| Error::Store { url: self.table_url(table).to_string(), source })
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
