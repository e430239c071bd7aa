//! Rebuilding a partition's state from the tables: its watermarks (the Delta
//! application transaction versions) and its dedup window (from the `events`
//! rows it stored, which carry their Kafka coordinates).

use std::sync::Arc;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::datafusion::prelude::SessionContext;

use crate::dedup::{self, DedupWindow};
use crate::error::{Error, Result};
use crate::partition::Watermarks;
use crate::table::{DeltaSink, TableKind, app_id};

/// Reads the four watermarks of one partition. `kafka_committed` is the
/// group's committed offset (the deduplicated-stream watermark), if any.
pub(crate) async fn watermarks(
    sinks: &mut [DeltaSink],
    source_id: Option<&str>,
    topic: &str,
    partition: i32,
    kafka_committed: Option<i64>,
) -> Result<Watermarks> {
    let id = app_id(source_id, topic, partition);
    let mut committed = [-1i64; 4];
    for sink in sinks.iter_mut() {
        sink.refresh().await?;
        committed[sink.kind().idx()] = sink.version_of(&id).await?.unwrap_or(-1);
    }
    let events = committed[TableKind::Events.idx()];
    let deduped = kafka_committed.map_or(events, |k| (k - 1).min(events));
    Ok(Watermarks { committed, deduped })
}

/// Restores the dedup window of one partition: every key stored from it
/// within the window, plus every key stored at an offset that replay will
/// revisit (at or after `replay_from`), oldest first.
pub(crate) async fn dedup_window(
    events: &DeltaSink,
    topic: &str,
    partition: i32,
    replay_from: i64,
    now_ms: i64,
    window_ms: i64,
    max_keys: usize,
) -> Result<DedupWindow> {
    let mut window = DedupWindow::new(window_ms, max_keys);
    let table = events.table();
    if table.snapshot().map(|s| s.log_data().num_files() == 0).unwrap_or(true) {
        return Ok(window);
    }
    let err = |source| Error::Restore { what: format!("dedup keys of {topic}/{partition}"), source };
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(Error::delta("events"))?;
    let provider = table.table_provider().await.map_err(err)?;
    ctx.register_table("events", Arc::clone(&provider)).map_err(err)?;
    let cutoff_us = (now_ms - window_ms).saturating_mul(1000);
    let sql = format!(
        "SELECT CAST(tenant AS VARCHAR) AS tenant, event_id, \
                CAST(ingested_at AS BIGINT) AS stored_us, src_offset \
         FROM events \
         WHERE src_topic = '{}' AND src_partition = {partition} \
           AND (src_offset >= {replay_from} OR CAST(ingested_at AS BIGINT) >= {cutoff_us}) \
         ORDER BY stored_us, src_offset",
        topic.replace('\'', "''")
    );
    let batches = ctx.sql(&sql).await.map_err(err)?.collect().await.map_err(err)?;
    // The engine may hand strings back as views or dictionaries: normalise.
    let col = |b: &deltalake::arrow::record_batch::RecordBatch, i: usize, to: &DataType| {
        cast(b.column(i), to).map_err(|e| Error::Restore { what: format!("dedup keys of {topic}/{partition}"), source: e.into() })
    };
    for b in batches {
        let (tenant, id) = (col(&b, 0, &DataType::Utf8)?, col(&b, 1, &DataType::Utf8)?);
        let (stored, offset) = (col(&b, 2, &DataType::Int64)?, col(&b, 3, &DataType::Int64)?);
        let (tenant, id) = (tenant.as_string::<i32>(), id.as_string::<i32>());
        let (stored, offset) = (stored.as_primitive::<Int64Type>(), offset.as_primitive::<Int64Type>());
        for i in 0..b.num_rows() {
            if tenant.is_null(i) || id.is_null(i) {
                continue;
            }
            let k = dedup::key(tenant.value(i), id.value(i));
            window.insert(k, stored.value(i) / 1000, offset.value(i));
        }
    }
    Ok(window)
}
