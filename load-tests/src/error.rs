//! The loadgen/verify error type.

use std::path::PathBuf;

/// Errors of `estate loadgen` and `estate verify`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration or input file.
    #[error("configuration: {0}")]
    Config(String),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A Kafka client operation failed.
    #[error("kafka {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// The query service answered with an error or could not be reached.
    #[error("query service {url}: {detail}")]
    Query {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// An HTTP endpoint other than the query service (ingest's `/metrics`)
    /// answered with an error or could not be reached.
    #[error("{url}: {detail}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The estate does not match the ground truth.
    #[error("verification failed: {0} mismatching checks")]
    Mismatch(usize),
    /// The DLQ could not be read.
    #[error("reading the DLQ: {0}")]
    Dlq(Box<estate_ingest::Error>),
    /// `estate status` could not ask some of its sources.
    #[error("{} source(s) unavailable: {}", .0.len(), .0.join("; "))]
    Unavailable(Vec<String>),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    pub(crate) fn kafka(what: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Error {
        let what = what.into();
        move |source| Error::Kafka { what, source }
    }
}

/// Result with the loadgen [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
