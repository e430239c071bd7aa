//! Arrow schemas and RecordBatch builders for the four Delta tables.
//!
//! Times are stored as `Timestamp(Microsecond, "UTC")` holding millisecond
//! values: Delta Lake's timestamp type is microseconds, so this is what the
//! table holds and what readers see. Each table is partitioned by
//! [`PARTITION_COLUMNS`]; `hour` is an ordinary column.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::decode::{Event, Heartbeat, NodeSnapshot};

/// Partition columns of every table, in order.
pub const PARTITION_COLUMNS: [&str; 2] = ["tenant", "date"];

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

static EVENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("tenant"),
        utf8("poller"),
        Field::new("epoch", DataType::Int64, true),
        Field::new("seq", DataType::Int64, true),
        utf8("event_id"),
        Field::new("time", ts(), true),
        utf8("node"),
        utf8("node_uuid"),
        utf8("event"),
        utf8("element"),
        utf8("level"),
        Field::new("level_rank", DataType::Int32, true),
        utf8("state"),
        utf8("details"),
        utf8("attrs"),
        Field::new("ingested_at", ts(), true),
        utf8("date"),
        Field::new("hour", DataType::Int32, true),
        utf8("src_topic"),
        Field::new("src_partition", DataType::Int32, true),
        Field::new("src_offset", DataType::Int64, true),
    ]))
});

static NODES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("tenant"),
        utf8("poller"),
        utf8("node"),
        utf8("node_uuid"),
        utf8("level"),
        Field::new("level_rank", DataType::Int32, true),
        Field::new("time", ts(), true),
        utf8("attrs"),
        Field::new("ingested_at", ts(), true),
        utf8("date"),
    ]))
});

static HEARTBEATS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("tenant"),
        utf8("poller"),
        Field::new("epoch", DataType::Int64, true),
        Field::new("seq", DataType::Int64, true),
        Field::new("time", ts(), true),
        Field::new("spool_depth", DataType::Int64, true),
        Field::new("ingested_at", ts(), true),
        utf8("date"),
    ]))
});

static RECEIPTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("tenant"),
        utf8("poller"),
        Field::new("epoch", DataType::Int64, true),
        Field::new("seq_start", DataType::Int64, true),
        Field::new("seq_end", DataType::Int64, true),
        Field::new("stored", DataType::Int64, true),
        Field::new("duplicates", DataType::Int64, true),
        Field::new("rejected", DataType::Int64, true),
        Field::new("ingested_at", ts(), true),
        utf8("date"),
    ]))
});

/// `events`: the SQL contract columns, then `src_topic`, `src_partition` and
/// `src_offset` (the Kafka coordinates each row came from: lineage, and what
/// ingest restores its dedup state from).
pub fn events_schema() -> SchemaRef {
    EVENTS.clone()
}
/// `nodes`: node snapshots; the latest per node wins at query time.
pub fn nodes_schema() -> SchemaRef {
    NODES.clone()
}
/// `heartbeats`.
pub fn heartbeats_schema() -> SchemaRef {
    HEARTBEATS.clone()
}
/// `receipts`: per commit and (tenant, poller, epoch), contiguous seq ranges
/// with the count of messages stored, dropped as duplicates and rejected. The
/// `date` partition is the ingest date.
pub fn receipts_schema() -> SchemaRef {
    RECEIPTS.clone()
}

/// `YYYY-MM-DD` of a UTC millisecond timestamp.
pub fn date_of(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // Civil-from-days (proleptic Gregorian), exact for the whole i64 day range we accept.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Hour of day (0–23, UTC) of a millisecond timestamp.
pub fn hour_of(ms: i64) -> i32 {
    (ms.rem_euclid(86_400_000) / 3_600_000) as i32
}

/// Caches the date string of the last day seen: rows of a batch are
/// overwhelmingly from the same day.
#[derive(Debug, Default)]
struct DateCache {
    day: Option<i64>,
    text: String,
}

impl DateCache {
    fn get(&mut self, ms: i64) -> &str {
        let day = ms.div_euclid(86_400_000);
        if self.day != Some(day) {
            self.day = Some(day);
            self.text = date_of(ms);
        }
        &self.text
    }
}

/// The most rows [`EventsBuilder::finish`] reserves room for.
const RESERVE_ROWS: usize = 65_536;

fn micros(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

fn ts_builder(cap: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(cap).with_timezone("UTC")
}

/// The Kafka coordinates of a message.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Builds `events` batches row by row.
#[derive(Debug)]
pub struct EventsBuilder {
    tenant: StringBuilder,
    poller: StringBuilder,
    epoch: Int64Builder,
    seq: Int64Builder,
    event_id: StringBuilder,
    time: TimestampMicrosecondBuilder,
    node: StringBuilder,
    node_uuid: StringBuilder,
    event: StringBuilder,
    element: StringBuilder,
    level: StringBuilder,
    level_rank: Int32Builder,
    state: StringBuilder,
    details: StringBuilder,
    attrs: StringBuilder,
    ingested_at: TimestampMicrosecondBuilder,
    date: StringBuilder,
    hour: Int32Builder,
    src_topic: StringBuilder,
    src_partition: Int32Builder,
    src_offset: Int64Builder,
    dates: DateCache,
    len: usize,
}

impl Default for EventsBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

impl EventsBuilder {
    /// A builder with room for `cap` rows before reallocating.
    pub fn with_capacity(cap: usize) -> Self {
        let s = || StringBuilder::with_capacity(cap, cap * 16);
        Self {
            tenant: s(),
            poller: s(),
            epoch: Int64Builder::with_capacity(cap),
            seq: Int64Builder::with_capacity(cap),
            event_id: s(),
            time: ts_builder(cap),
            node: s(),
            node_uuid: s(),
            event: s(),
            element: s(),
            level: s(),
            level_rank: Int32Builder::with_capacity(cap),
            state: s(),
            details: StringBuilder::with_capacity(cap, cap * 48),
            attrs: s(),
            ingested_at: ts_builder(cap),
            date: s(),
            hour: Int32Builder::with_capacity(cap),
            src_topic: s(),
            src_partition: Int32Builder::with_capacity(cap),
            src_offset: Int64Builder::with_capacity(cap),
            dates: DateCache::default(),
            len: 0,
        }
    }

    /// Rows appended since the last finish.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one event.
    pub fn append(&mut self, tenant: &str, e: &Event<'_>, ingested_at_ms: i64, src: Source<'_>) {
        self.tenant.append_value(tenant);
        self.poller.append_value(&e.origin.poller);
        self.epoch.append_value(e.origin.epoch);
        self.seq.append_value(e.origin.seq);
        self.event_id.append_value(&e.event_id);
        self.time.append_value(micros(e.time_ms));
        self.node.append_value(&e.node);
        self.node_uuid.append_option(e.node_uuid.as_deref());
        self.event.append_value(&e.event);
        self.element.append_value(&e.element);
        self.level.append_value(e.level.as_str());
        self.level_rank.append_value(e.level.rank());
        self.state.append_option(e.state.map(|s| s.as_str()));
        self.details.append_value(&e.details);
        self.attrs.append_option(e.attrs);
        self.ingested_at.append_value(micros(ingested_at_ms));
        self.date.append_value(self.dates.get(e.time_ms));
        self.hour.append_value(hour_of(e.time_ms));
        self.src_topic.append_value(src.topic);
        self.src_partition.append_value(src.partition);
        self.src_offset.append_value(src.offset);
        self.len += 1;
    }

    /// Takes the rows held as a batch and resets the builder, with room
    /// reserved for a batch of the same shape (up to [`RESERVE_ROWS`] rows):
    /// growing from empty by doubling would copy every column again.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let rows = std::mem::take(&mut self.len);
        let cap = rows.min(RESERVE_ROWS);
        let s = |b: &mut StringBuilder| -> ArrayRef {
            let a = b.finish();
            let per_row = a.value_data().len() / rows.max(1);
            *b = StringBuilder::with_capacity(cap, per_row * cap);
            Arc::new(a)
        };
        let i64s = |b: &mut Int64Builder| -> ArrayRef { Arc::new(std::mem::replace(b, Int64Builder::with_capacity(cap)).finish()) };
        let i32s = |b: &mut Int32Builder| -> ArrayRef { Arc::new(std::mem::replace(b, Int32Builder::with_capacity(cap)).finish()) };
        let tss = |b: &mut TimestampMicrosecondBuilder| -> ArrayRef { Arc::new(std::mem::replace(b, ts_builder(cap)).finish()) };
        let cols: Vec<ArrayRef> = vec![
            s(&mut self.tenant),
            s(&mut self.poller),
            i64s(&mut self.epoch),
            i64s(&mut self.seq),
            s(&mut self.event_id),
            tss(&mut self.time),
            s(&mut self.node),
            s(&mut self.node_uuid),
            s(&mut self.event),
            s(&mut self.element),
            s(&mut self.level),
            i32s(&mut self.level_rank),
            s(&mut self.state),
            s(&mut self.details),
            s(&mut self.attrs),
            tss(&mut self.ingested_at),
            s(&mut self.date),
            i32s(&mut self.hour),
            s(&mut self.src_topic),
            i32s(&mut self.src_partition),
            i64s(&mut self.src_offset),
        ];
        RecordBatch::try_new(events_schema(), cols)
    }
}

/// Builds `nodes` batches.
#[derive(Debug, Default)]
pub struct NodesBuilder {
    tenant: StringBuilder,
    poller: StringBuilder,
    node: StringBuilder,
    node_uuid: StringBuilder,
    level: StringBuilder,
    level_rank: Int32Builder,
    time: TimestampMicrosecondBuilder,
    attrs: StringBuilder,
    ingested_at: TimestampMicrosecondBuilder,
    date: StringBuilder,
    dates: DateCache,
    len: usize,
}

impl NodesBuilder {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Appends one snapshot.
    pub fn append(&mut self, tenant: &str, n: &NodeSnapshot<'_>, ingested_at_ms: i64) {
        self.tenant.append_value(tenant);
        self.poller.append_value(&n.origin.poller);
        self.node.append_value(&n.node);
        self.node_uuid.append_option(n.node_uuid.as_deref());
        self.level.append_value(n.level.as_str());
        self.level_rank.append_value(n.level.rank());
        self.time.append_value(micros(n.time_ms));
        self.attrs.append_option(n.attrs);
        self.ingested_at.append_value(micros(ingested_at_ms));
        self.date.append_value(self.dates.get(n.time_ms));
        self.len += 1;
    }
    /// Takes the rows held as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.len = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.tenant.finish()),
            Arc::new(self.poller.finish()),
            Arc::new(self.node.finish()),
            Arc::new(self.node_uuid.finish()),
            Arc::new(self.level.finish()),
            Arc::new(self.level_rank.finish()),
            Arc::new(self.time.finish().with_timezone("UTC")),
            Arc::new(self.attrs.finish()),
            Arc::new(self.ingested_at.finish().with_timezone("UTC")),
            Arc::new(self.date.finish()),
        ];
        RecordBatch::try_new(nodes_schema(), cols)
    }
}

/// Builds `heartbeats` batches.
#[derive(Debug, Default)]
pub struct HeartbeatsBuilder {
    tenant: StringBuilder,
    poller: StringBuilder,
    epoch: Int64Builder,
    seq: Int64Builder,
    time: TimestampMicrosecondBuilder,
    spool_depth: Int64Builder,
    ingested_at: TimestampMicrosecondBuilder,
    date: StringBuilder,
    dates: DateCache,
    len: usize,
}

impl HeartbeatsBuilder {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Appends one heartbeat.
    pub fn append(&mut self, tenant: &str, h: &Heartbeat<'_>, ingested_at_ms: i64) {
        self.tenant.append_value(tenant);
        self.poller.append_value(&h.origin.poller);
        self.epoch.append_value(h.origin.epoch);
        self.seq.append_value(h.origin.seq);
        self.time.append_value(micros(h.time_ms));
        self.spool_depth.append_value(h.spool_depth);
        self.ingested_at.append_value(micros(ingested_at_ms));
        self.date.append_value(self.dates.get(h.time_ms));
        self.len += 1;
    }
    /// Takes the rows held as a batch.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        self.len = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.tenant.finish()),
            Arc::new(self.poller.finish()),
            Arc::new(self.epoch.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.time.finish().with_timezone("UTC")),
            Arc::new(self.spool_depth.finish()),
            Arc::new(self.ingested_at.finish().with_timezone("UTC")),
            Arc::new(self.date.finish()),
        ];
        RecordBatch::try_new(heartbeats_schema(), cols)
    }
}

/// One `receipts` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    /// Tenant.
    pub tenant: String,
    /// Poller id.
    pub poller: String,
    /// Poller epoch.
    pub epoch: i64,
    /// First seq of the contiguous range.
    pub seq_start: i64,
    /// Last seq of the range (inclusive).
    pub seq_end: i64,
    /// Messages in the range that were stored.
    pub stored: i64,
    /// Messages in the range dropped as duplicates.
    pub duplicates: i64,
    /// Messages in the range rejected to the DLQ.
    pub rejected: i64,
}

/// Builds `receipts` batches.
#[derive(Debug, Default)]
pub struct ReceiptsBuilder {
    rows: Vec<ReceiptRow>,
}

impl ReceiptsBuilder {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    /// True when no row is held.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// Appends one row.
    pub fn push(&mut self, row: ReceiptRow) {
        self.rows.push(row);
    }
    /// Takes the rows held as a batch, stamped with the ingest time.
    pub fn finish(&mut self, ingested_at_ms: i64) -> Result<RecordBatch, ArrowError> {
        let rows = std::mem::take(&mut self.rows);
        let mut tenant = StringBuilder::new();
        let mut poller = StringBuilder::new();
        let (mut epoch, mut start, mut end) = (Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
        let (mut stored, mut dups, mut rej) = (Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
        let mut ing = ts_builder(rows.len());
        let mut date = StringBuilder::new();
        let day = date_of(ingested_at_ms);
        for r in &rows {
            tenant.append_value(&r.tenant);
            poller.append_value(&r.poller);
            epoch.append_value(r.epoch);
            start.append_value(r.seq_start);
            end.append_value(r.seq_end);
            stored.append_value(r.stored);
            dups.append_value(r.duplicates);
            rej.append_value(r.rejected);
            ing.append_value(micros(ingested_at_ms));
            date.append_value(&day);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(tenant.finish()),
            Arc::new(poller.finish()),
            Arc::new(epoch.finish()),
            Arc::new(start.finish()),
            Arc::new(end.finish()),
            Arc::new(stored.finish()),
            Arc::new(dups.finish()),
            Arc::new(rej.finish()),
            Arc::new(ing.finish()),
            Arc::new(date.finish()),
        ];
        RecordBatch::try_new(receipts_schema(), cols)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(946_684_800_000), "2000-01-01");
        assert_eq!(date_of(1_709_164_800_000), "2024-02-29");
        assert_eq!(date_of(1_709_251_199_999), "2024-02-29");
        assert_eq!(date_of(1_709_251_200_000), "2024-03-01");
        assert_eq!(date_of(-1), "1969-12-31");
        assert_eq!(hour_of(1_709_251_199_999), 23);
    }
}
