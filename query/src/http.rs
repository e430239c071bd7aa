//! The HTTP interface: `POST /v1/sql`, `GET /healthz`, `GET /metrics`.
//!
//! The answer format follows `Accept`: a JSON array of row objects (default),
//! `text/csv`, or `application/vnd.apache.arrow.stream`. Errors are JSON
//! `{"error": "…"}` with the status of [`Error::http_status`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use deltalake::arrow::csv::WriterBuilder as CsvWriterBuilder;
use deltalake::arrow::ipc::writer::StreamWriter;
use deltalake::arrow::json::{WriterBuilder as JsonWriterBuilder, writer::JsonArray};
use serde::Deserialize;

use crate::auth::Auth;
use crate::catalog::{AsOf, Catalog};
use crate::engine::{Answer, Engine};
use crate::error::{Error, Result};

/// The Arrow IPC stream media type.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(Debug, Clone)]
struct AppState {
    engine: Arc<Engine>,
    auth: Arc<Auth>,
    catalog: Arc<Catalog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    /// Time travel: an RFC 3339 time or an `events` version number.
    #[serde(default)]
    as_of: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Arrow,
}

fn format_of(headers: &HeaderMap) -> Format {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    }
}

fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": e.to_string() }).to_string();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if matches!(e, Error::Unauthorized(_)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn encode(answer: &Answer, format: Format) -> Result<(Vec<u8>, &'static str)> {
    let internal = |e: deltalake::arrow::error::ArrowError| Error::Internal(format!("encoding the answer: {e}"));
    match format {
        Format::Json => {
            let mut w = JsonWriterBuilder::new().with_explicit_nulls(true).build::<_, JsonArray>(Vec::new());
            for b in &answer.batches {
                w.write(b).map_err(internal)?;
            }
            w.finish().map_err(internal)?;
            Ok((w.into_inner(), "application/json"))
        }
        Format::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = CsvWriterBuilder::new().with_header(true).build(&mut buf);
                if answer.batches.is_empty() {
                    // Still send the header line for an empty answer.
                    w.write(&deltalake::arrow::array::RecordBatch::new_empty(answer.schema.clone()))
                        .map_err(internal)?;
                }
                for b in &answer.batches {
                    w.write(b).map_err(internal)?;
                }
            }
            Ok((buf, "text/csv"))
        }
        Format::Arrow => {
            let (schema, batches) = answer.plain()?;
            let mut w = StreamWriter::try_new(Vec::new(), &schema).map_err(internal)?;
            for b in &batches {
                w.write(b).map_err(internal)?;
            }
            w.finish().map_err(internal)?;
            Ok((w.into_inner().map_err(internal)?, ARROW_STREAM))
        }
    }
}

async fn sql(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let outcome = async {
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let principal = s.auth.authenticate(auth)?;
        let req: SqlRequest = serde_json::from_slice(&body)
            .map_err(|e| Error::BadSql(format!("the body must be JSON {{\"sql\": \"…\"}}: {e}")))?;
        let as_of = match &req.as_of {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(t)) => Some(AsOf::parse(t)?),
            Some(serde_json::Value::Number(n)) => Some(AsOf::parse(&n.to_string())?),
            Some(_) => return Err(Error::BadSql("as_of must be an RFC 3339 time string or a version number".into())),
        };
        let answer = s.engine.execute_at(&principal, &req.sql, as_of.as_ref(), "http").await?;
        encode(&answer, format_of(&headers))
    }
    .await;
    match outcome {
        Ok((bytes, content_type)) => {
            let mut r = (StatusCode::OK, bytes).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        Err(e) => {
            if matches!(e, Error::Unauthorized(_)) {
                s.engine.metrics.query_done("http", e.status_label());
            }
            error_response(&e)
        }
    }
}

async fn healthz(State(s): State<AppState>) -> Response {
    let snapshots = s.catalog.snapshots();
    let mut tables = serde_json::Map::new();
    for kind in estate_ingest::TableKind::ALL {
        let v = snapshots.get(kind).map(|p| serde_json::json!({ "version": p.version, "files": p.files }));
        tables.insert(kind.name().to_owned(), v.unwrap_or(serde_json::Value::Null));
    }
    let body = serde_json::json!({ "status": "ok", "tables": tables }).to_string();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        s.engine.metrics.render(),
    )
        .into_response()
}

/// Binds the HTTP listener; returns the bound address and the server future.
pub async fn bind(
    addr: SocketAddr,
    engine: Arc<Engine>,
    auth: Arc<Auth>,
    catalog: Arc<Catalog>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let app = Router::new()
        .route("/v1/sql", post(sql))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(AppState { engine, auth, catalog });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io { what: format!("binding HTTP on {addr}"), source })?;
    let bound = listener.local_addr().map_err(|source| Error::Io { what: "HTTP local address".into(), source })?;
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    };
    Ok((bound, serve))
}
