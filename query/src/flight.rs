//! The Arrow Flight SQL interface.
//!
//! Statement queries, prepared statements and the metadata calls clients make
//! on connect (GetSqlInfo, GetCatalogs, GetDbSchemas, GetTables,
//! GetTableTypes). Every call carries `authorization: Bearer <token>` and
//! runs with the same tenancy, limits and read-only gate as HTTP. A prepared
//! statement is bound to the token that created it: any other token is told
//! the handle does not exist.
//!
//! Results are sent in plain types ([`Answer::plain`](crate::engine::Answer::plain)),
//! which every Flight SQL client (ADBC, JDBC) reads.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo,
    CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::{Schema, SchemaRef};
use deltalake::arrow::ipc::writer::IpcWriteOptions;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Auth, Principal};
use crate::catalog::AsOf;
use crate::engine::{Engine, plain_schema};
use crate::error::Error;
use crate::session::{CATALOG, SCHEMA};

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// Open prepared statements across all tokens; more are refused.
const MAX_PREPARED: usize = 10_000;

#[derive(Debug)]
struct Prepared {
    token: String,
    sql: String,
    schema: SchemaRef,
}

/// The Flight SQL service.
pub struct FlightSql {
    engine: Arc<Engine>,
    auth: Arc<Auth>,
    prepared: Mutex<HashMap<Vec<u8>, Prepared>>,
    sql_info: SqlInfoData,
}

/// Maps an error to the gRPC status a Flight SQL client understands.
/// Time travel over Flight SQL: the `x-estate-as-of` call header (an RFC
/// 3339 time or an `events` version), on both GetFlightInfo and DoGet.
fn as_of_header<T>(request: &Request<T>) -> Result<Option<AsOf>, Status> {
    match request.metadata().get("x-estate-as-of") {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| Status::invalid_argument("x-estate-as-of is not text"))?;
            AsOf::parse(s).map(Some).map_err(to_status)
        }
    }
}

pub fn to_status(e: Error) -> Status {
    let msg = e.to_string();
    match e.http_status() {
        400 => Status::invalid_argument(msg),
        401 => Status::unauthenticated(msg),
        403 => Status::permission_denied(msg),
        404 => Status::not_found(msg),
        408 => Status::deadline_exceeded(msg),
        413 | 429 => Status::resource_exhausted(msg),
        _ => Status::internal(msg),
    }
}

fn stream_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> Response<DoGetStream> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Response::new(Box::pin(stream))
}

/// Streams the single batch a metadata builder made.
fn one_batch<E: std::fmt::Display>(
    schema: SchemaRef,
    batch: Result<RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    Ok(stream_batches(schema, vec![batch]))
}

fn info(command: Vec<u8>, schema: &Schema, descriptor: FlightDescriptor) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(command));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn build_sql_info() -> SqlInfoData {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "estate");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.build().expect("static SqlInfo is valid")
}

impl std::fmt::Debug for FlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightSql").field("engine", &self.engine).finish_non_exhaustive()
    }
}

impl FlightSql {
    /// A service over `engine`, authenticating with `auth`.
    pub fn new(engine: Arc<Engine>, auth: Arc<Auth>) -> FlightSql {
        FlightSql { engine, auth, prepared: Mutex::new(HashMap::new()), sql_info: build_sql_info() }
    }

    /// Wraps the service for tonic.
    pub fn into_server(self) -> FlightServiceServer<FlightSql> {
        FlightServiceServer::new(self)
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(Principal, String), Status> {
        let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let principal = self.auth.authenticate(header).map_err(|e| {
            self.engine.metrics.query_done("flight", e.status_label());
            to_status(e)
        })?;
        Ok((principal, header.unwrap_or_default().to_owned()))
    }

    /// Finds a prepared statement made with the same token.
    fn prepared(&self, handle: &[u8], token: &str) -> Result<(String, SchemaRef), Status> {
        let map = self.prepared.lock().expect("prepared lock");
        match map.get(handle) {
            Some(p) if p.token == token => Ok((p.sql.clone(), p.schema.clone())),
            // Same answer whether the handle is unknown or another token's,
            // so a handle cannot be probed.
            _ => Err(to_status(Error::UnknownStatement)),
        }
    }

    async fn run(&self, principal: &Principal, sql: &str, as_of: Option<&AsOf>) -> Result<Response<DoGetStream>, Status> {
        let answer = self.engine.execute_at(principal, sql, as_of, "flight").await.map_err(to_status)?;
        let (schema, batches) = answer.plain().map_err(to_status)?;
        Ok(stream_batches(schema, batches))
    }

    async fn schema_of(&self, principal: &Principal, sql: &str, as_of: Option<&AsOf>) -> Result<SchemaRef, Status> {
        let planned = self.engine.plan_at(principal, sql, as_of).await.map_err(to_status)?;
        Ok(plain_schema(&planned.schema()))
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let (_, header) = self.authorize(&request)?;
        let token = header.trim_start_matches("Bearer ").trim_start_matches("bearer ").to_owned();
        let reply = HandshakeResponse { protocol_version: 0, payload: token.into_bytes().into() };
        let stream: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::once(async move { Ok(reply) }));
        let mut resp = Response::new(stream);
        if let Ok(v) = header.parse() {
            resp.metadata_mut().insert("authorization", v);
        }
        Ok(resp)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (principal, _) = self.authorize(&request)?;
        let as_of = as_of_header(&request)?;
        let schema = self.schema_of(&principal, &query.query, as_of.as_ref()).await?;
        let ticket = TicketStatementQuery { statement_handle: query.query.into_bytes().into() };
        info(ticket.as_any().encode_to_vec(), &schema, request.into_inner())
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (principal, _) = self.authorize(&request)?;
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("statement handle is not UTF-8 SQL"))?;
        let as_of = as_of_header(&request)?;
        self.run(&principal, &sql, as_of.as_ref()).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let (principal, token) = self.authorize(&request)?;
        let schema = self.schema_of(&principal, &query.query, None).await?;
        let IpcMessage(schema_bytes) = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: deltalake::arrow::error::ArrowError| Status::internal(format!("encoding the schema: {e}")))?;
        let handle = uuid::Uuid::new_v4().as_bytes().to_vec();
        {
            let mut map = self.prepared.lock().expect("prepared lock");
            if map.len() >= MAX_PREPARED {
                return Err(Status::resource_exhausted("too many open prepared statements; close some"));
            }
            map.insert(handle.clone(), Prepared { token, sql: query.query, schema });
        }
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (_, token) = self.authorize(&request)?;
        let (_, schema) = self.prepared(&cmd.prepared_statement_handle, &token)?;
        info(cmd.as_any().encode_to_vec(), &schema, request.into_inner())
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (principal, token) = self.authorize(&request)?;
        let (sql, _) = self.prepared(&cmd.prepared_statement_handle, &token)?;
        let as_of = as_of_header(&request)?;
        self.run(&principal, &sql, as_of.as_ref()).await
    }

    async fn do_put_prepared_statement_query(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let (_, token) = self.authorize(&request)?;
        self.prepared(&cmd.prepared_statement_handle, &token)?;
        let mut stream = request.into_inner();
        if let Some(first) = stream.next().await {
            let first = first?;
            if !first.data_body.is_empty() {
                return Err(Status::invalid_argument("statement parameters are not supported"));
            }
        }
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(cmd.prepared_statement_handle) })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        let (_, token) = self.authorize(&request)?;
        self.prepared(&query.prepared_statement_handle, &token)?;
        self.prepared.lock().expect("prepared lock").remove(query.prepared_statement_handle.as_ref());
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.into_builder().schema();
        info(query.as_any().encode_to_vec(), &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let mut b = query.into_builder();
        b.append(CATALOG);
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.clone().into_builder().schema();
        info(query.as_any().encode_to_vec(), &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        b.append(CATALOG, "information_schema");
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.clone().into_builder().schema();
        info(query.as_any().encode_to_vec(), &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let (principal, _) = self.authorize(&request)?;
        let ctx = self.engine.session(&principal).await.map_err(to_status)?;
        let mut b = query.into_builder();
        let catalog = ctx.catalog(CATALOG).ok_or_else(|| Status::internal("catalog missing"))?;
        let mut schema_names = catalog.schema_names();
        schema_names.sort();
        for schema_name in schema_names {
            let Some(schema) = catalog.schema(&schema_name) else { continue };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                let Ok(Some(table)) = schema.table(&name).await else { continue };
                let kind = match table.table_type() {
                    deltalake::datafusion::datasource::TableType::View => "VIEW",
                    _ => "TABLE",
                };
                let table_schema = plain_schema(&table.schema());
                b.append(CATALOG, &schema_name, &name, kind, &table_schema)
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.into_builder().schema();
        info(query.as_any().encode_to_vec(), &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let mut b = query.into_builder();
        b.append("TABLE");
        b.append("VIEW");
        one_batch(b.schema(), b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let schema = query.clone().into_builder(&self.sql_info).schema();
        info(query.as_any().encode_to_vec(), &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        let b = query.into_builder(&self.sql_info);
        one_batch(b.schema(), b.build())
    }

    async fn do_get_fallback(&self, request: Request<Ticket>, message: Any) -> Result<Response<DoGetStream>, Status> {
        self.authorize(&request)?;
        Err(Status::unimplemented(format!("unsupported Flight SQL request {}", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
