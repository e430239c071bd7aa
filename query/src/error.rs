//! The query error type, with the HTTP status each error answers with.
//!
//! Messages that come from the engine are passed through [`redact`] before a
//! client sees them, so no store path or bucket name leaks in an error.

use std::time::Duration;

use deltalake::datafusion::error::DataFusionError;

/// Errors of the query service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration (startup).
    #[error("configuration: {0}")]
    Config(String),
    /// The store or a table could not be opened.
    #[error("store {url}: {source}")]
    Store {
        /// Store URL.
        url: String,
        /// Cause.
        source: deltalake::DeltaTableError,
    },
    /// A listener could not be bound or served.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No token, or an unknown one (401).
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// A statement that the read-only service refuses (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The SQL does not parse or plan (400).
    #[error("{0}")]
    BadSql(String),
    /// The query needed more memory than its limit (400: narrow the query).
    #[error("query exceeded its memory limit: {0}")]
    MemoryLimit(String),
    /// The query ran past the time limit and was cancelled (408).
    #[error("query cancelled after the time limit of {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The answer has more rows than the limit (413).
    #[error("the answer has more than {0} rows; add a LIMIT or aggregate")]
    TooManyRows(usize),
    /// Too many queries of this tenant are running (429).
    #[error("too many concurrent queries for this tenant; retry later")]
    Busy,
    /// A prepared statement handle that does not exist or belongs to another token (404).
    #[error("unknown prepared statement")]
    UnknownStatement,
    /// Anything else (500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The HTTP status code of this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::BadSql(_) | Error::MemoryLimit(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::UnknownStatement => 404,
            Error::Timeout(_) => 408,
            Error::TooManyRows(_) => 413,
            Error::Busy => 429,
            Error::Config(_) | Error::Store { .. } | Error::Io { .. } | Error::Internal(_) => 500,
        }
    }

    /// The status label for metrics.
    pub fn status_label(&self) -> &'static str {
        match self {
            Error::BadSql(_) => "bad_sql",
            Error::MemoryLimit(_) => "memory_limit",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::UnknownStatement => "unknown_statement",
            Error::Timeout(_) => "timeout",
            Error::TooManyRows(_) => "too_many_rows",
            Error::Busy => "busy",
            Error::Config(_) | Error::Store { .. } | Error::Io { .. } | Error::Internal(_) => "internal",
        }
    }

    /// Classifies an engine error. `root` is the store root, redacted from
    /// the message.
    pub fn from_datafusion(e: DataFusionError, root: &str) -> Error {
        let msg = redact(&e.strip_backtrace(), root);
        match e.find_root() {
            DataFusionError::ResourcesExhausted(_) => Error::MemoryLimit(msg),
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Execution(_)
            | DataFusionError::ArrowError(..)
            | DataFusionError::Configuration(_) => Error::BadSql(msg),
            _ => Error::Internal(msg),
        }
    }
}

/// Removes the store root (as URL and as plain path) from a message and
/// replaces it by `<store>/`.
pub fn redact(msg: &str, root: &str) -> String {
    let mut out = msg.replace(root, "<store>/");
    if let Some(path) = root.strip_prefix("file://") {
        out = out.replace(path, "<store>/");
        let trimmed = path.trim_start_matches('/');
        if !trimmed.is_empty() {
            out = out.replace(trimmed, "<store>/");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let root = "file:///data/estate/";
        assert_eq!(redact("file:///data/estate/events/x.parquet", root), "<store>/events/x.parquet");
        assert_eq!(redact("at /data/estate/events/x", root), "at <store>/events/x");
        assert_eq!(redact("Object at location data/estate/events", root), "Object at location <store>/events");
    }

    #[test]
    fn classification() {
        let e = Error::from_datafusion(DataFusionError::ResourcesExhausted("x".into()), "file:///a/");
        assert_eq!(e.http_status(), 400);
        assert_eq!(e.status_label(), "memory_limit");
        let e = Error::from_datafusion(DataFusionError::Plan("no table".into()), "file:///a/");
        assert_eq!(e.http_status(), 400);
        let e = Error::from_datafusion(
            DataFusionError::Context("ctx".into(), Box::new(DataFusionError::ResourcesExhausted("m".into()))),
            "file:///a/",
        );
        assert!(matches!(e, Error::MemoryLimit(_)));
        assert_eq!(Error::Timeout(Duration::from_secs(2)).http_status(), 408);
        assert_eq!(Error::TooManyRows(5).http_status(), 413);
    }
}
