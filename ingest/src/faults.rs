//! A fault-injecting object store, for testing only.
//!
//! `FaultyStore` wraps a real store and makes a configurable share of writes
//! fail and delays others. It exists so that the "object store trouble" tests
//! exercise the real commit protocol against real failures; it is enabled only
//! by the explicitly named `--test-inject-store-faults` option.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use rand::Rng;

/// What to inject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultSpec {
    /// Share of writes (puts, multipart starts, copies) that fail, 0.0–1.0.
    pub fail_writes: f64,
    /// Share of operations that are delayed by `delay`.
    pub delay_share: f64,
    /// The injected delay.
    pub delay: Duration,
}

impl std::str::FromStr for FaultSpec {
    type Err = String;
    /// Parses `fail=0.1,delay=50ms,delay_share=0.3`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut spec = FaultSpec { fail_writes: 0.0, delay_share: 0.0, delay: Duration::ZERO };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("expected key=value in {part:?}"))?;
            let share = || -> Result<f64, String> {
                let x: f64 = v.parse().map_err(|e| format!("{k}: {e}"))?;
                if (0.0..=1.0).contains(&x) { Ok(x) } else { Err(format!("{k} must be within 0..=1")) }
            };
            match k {
                "fail" => spec.fail_writes = share()?,
                "delay_share" => spec.delay_share = share()?,
                "delay" => spec.delay = humantime::parse_duration(v).map_err(|e| format!("delay: {e}"))?,
                other => return Err(format!("unknown fault key {other:?} (fail, delay, delay_share)")),
            }
        }
        if spec.delay > Duration::ZERO && spec.delay_share == 0.0 {
            spec.delay_share = 0.5;
        }
        Ok(spec)
    }
}

/// The wrapper.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    spec: FaultSpec,
}

impl FaultyStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>, spec: FaultSpec) -> Self {
        Self { inner, spec }
    }

    async fn maybe_delay(&self) {
        let hit = self.spec.delay_share > 0.0 && rand::rng().random_bool(self.spec.delay_share);
        if hit {
            tokio::time::sleep(self.spec.delay).await;
        }
    }

    async fn write_gate(&self, path: &Path) -> Result<()> {
        self.maybe_delay().await;
        if self.spec.fail_writes > 0.0 && rand::rng().random_bool(self.spec.fail_writes) {
            // Logged here, not only by whoever sees the error: delta-rs may
            // retry a failed log write or wrap the error without its text, and
            // a test must be able to tell that faults were really injected.
            tracing::warn!(%path, "FaultyStore: injected write failure");
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: format!("injected write failure on {path}").into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.write_gate(location).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.write_gate(location).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.maybe_delay().await;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.maybe_delay().await;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.write_gate(to).await?;
        self.inner.copy_opts(from, to, options).await
    }
}
