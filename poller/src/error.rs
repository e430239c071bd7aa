//! The poller error type. Each variant says where it happened; [`Error::kind`]
//! tells the operator whether to fix configuration, wait for Kafka or the
//! disk, or file a bug.

use std::path::PathBuf;

use rdkafka::error::KafkaError;

/// Who must act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad configuration or arguments: fix and restart.
    User,
    /// Kafka or the local disk misbehaved: usually transient.
    External,
    /// A bug in estate.
    Internal,
}

/// Errors of the poller agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The spool directory holds something we cannot use.
    #[error("spool {path}: {detail}")]
    Spool {
        /// The spool directory or file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another agent holds the spool directory.
    #[error("spool {0} is locked by another estate poller process")]
    SpoolLocked(PathBuf),
    /// A Kafka client operation failed.
    #[error("kafka {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// Cause.
        source: KafkaError,
    },
    /// A worker thread panicked or vanished: a bug.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Who must act.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) | Error::SpoolLocked(_) => ErrorKind::User,
            Error::Io { .. } | Error::Spool { .. } | Error::Kafka { .. } => ErrorKind::External,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether this is a file operation that failed for lack of space
    /// (ENOSPC, or a quota): the spool waits for space instead of failing.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    }

    /// A closure building an [`Error::Io`], for `map_err`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// A closure building an [`Error::Kafka`], for `map_err`.
    pub(crate) fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
        let what = what.into();
        move |source| Error::Kafka { what, source }
    }
}

/// Result with the poller [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
