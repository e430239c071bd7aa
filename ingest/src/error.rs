//! The ingest error type. Each variant says where it happened and whether the
//! operator should fix configuration, wait for an external system, or file a
//! bug ([`Error::kind`]).

use deltalake::DeltaTableError;
use rdkafka::error::KafkaError;

/// Who must act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad configuration or arguments: fix and restart.
    User,
    /// Kafka or the object store misbehaved: usually transient, retried.
    External,
    /// A bug in estate.
    Internal,
}

/// Errors of the ingest stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The store URL cannot be used.
    #[error("store {url}: {source}")]
    Store {
        /// Store URL.
        url: String,
        /// Cause.
        source: DeltaTableError,
    },
    /// A Delta operation on a table failed.
    #[error("delta table {table}: {source}")]
    Delta {
        /// Table name.
        table: &'static str,
        /// Cause.
        source: DeltaTableError,
    },
    /// A Kafka client operation failed.
    #[error("kafka {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// Cause.
        source: KafkaError,
    },
    /// Records could not be published even after retries.
    #[error("publishing {failed} records to {topic} failed after retries")]
    Publish {
        /// Topic.
        topic: String,
        /// Records that failed.
        failed: usize,
    },
    /// Arrow or Parquet failed on data we built: a bug.
    #[error("arrow: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    /// Anything else from DataFusion while restoring state.
    #[error("query while restoring {what}: {source}")]
    Restore {
        /// What was being restored.
        what: String,
        /// Cause.
        source: deltalake::datafusion::error::DataFusionError,
    },
    /// The DLQ could not be read or replayed to the end.
    #[error("DLQ {topic}: {detail}")]
    Dlq {
        /// The DLQ topic.
        topic: String,
        /// What went wrong, and how far it got.
        detail: String,
    },
    /// I/O error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
}

impl Error {
    /// Who must act.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::Store { .. } => ErrorKind::User,
            Error::Delta { .. }
            | Error::Kafka { .. }
            | Error::Publish { .. }
            | Error::Io { .. }
            | Error::Restore { .. }
            | Error::Dlq { .. } => {
                ErrorKind::External
            }
            Error::Arrow(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn delta(table: &'static str) -> impl FnOnce(DeltaTableError) -> Error {
        move |source| Error::Delta { table, source }
    }

    pub(crate) fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        let what = what.into();
        move |source| Error::Kafka { what, source }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
