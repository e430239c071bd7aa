//! The derived views every session sees, as SQL over the base tables.
//!
//! Base tables: `events`, `node_snapshots` (every `nodes` row), `heartbeats`,
//! `receipts`. Views: `nodes` (latest snapshot per node), `active_events`,
//! `pollers`, `loss_audit`. Views are planned inside the principal's session,
//! so they read exactly the files the base tables resolve for that principal.

use std::time::Duration;

/// Thresholds of the `pollers` view.
#[derive(Debug, Clone, Copy)]
pub struct PollerThresholds {
    /// Older than this: `late`.
    pub late_after: Duration,
    /// Older than this, or no heartbeat at all: `down`.
    pub down_after: Duration,
}

/// `(name, SQL)` of every view, in dependency order.
pub fn views(t: PollerThresholds) -> Vec<(&'static str, String)> {
    vec![
        ("nodes", NODES.to_owned()),
        ("active_events", active_events()),
        ("pollers", pollers(t)),
        ("loss_audit", LOSS_AUDIT.to_owned()),
    ]
}

// "Latest row per key" without a window partitioned by the key: DataFusion's
// window operator pays per partition, and there is one per node (query 08
// spent 120 of its 150 ms there on 20k nodes). Partitioned by tenant and
// ordered by the key, the first row of each key is the one whose previous
// row has another key. Ties on (time, ingested_at) pick one row, as
// row_number() = 1 did. The parentheses around `IS DISTINCT FROM` are
// needed: DataFusion's SQL parser binds it looser than `OR`.
const NODES: &str = "\
SELECT tenant, poller, node, node_uuid, level, level_rank, time, attrs, ingested_at \
FROM (SELECT *, lag(node) OVER (PARTITION BY tenant ORDER BY node, time DESC, ingested_at DESC) AS prev_node \
      FROM node_snapshots) AS latest \
WHERE (prev_node IS DISTINCT FROM node)";

// The latest `down` row of each open condition, found with ordered
// aggregates: memory holds a row per condition, not per event. The earlier form
// joined every `down` row of an open run and sorted them twice for its
// window functions, so its memory grew with the length of the runs: in a
// 20-minute soak the join's output grew from 25k rows to 84k while the
// open conditions stayed near 2,500 (docs/reliability.md). Ties on time go
// to the greater event_id, as before.
fn active_events() -> String {
    let cond = estate_schemas::condition_sql("event");
    let latest = "ORDER BY s.time DESC, s.event_id DESC";
    format!(
        "WITH s AS (\
           SELECT tenant, node, element, {cond} AS condition, event, level, level_rank, state, time, \
                  poller, details, event_id \
           FROM events WHERE state IS NOT NULL), \
         k AS (\
           SELECT tenant, node, element, condition, \
                  max(CASE WHEN state = 'up' THEN time END) AS last_up, \
                  max(CASE WHEN state = 'down' THEN time END) AS last_down \
           FROM s GROUP BY tenant, node, element, condition), \
         open AS (SELECT * FROM k WHERE last_down IS NOT NULL AND (last_up IS NULL OR last_down > last_up)), \
         run AS (\
           SELECT s.tenant, s.node, s.element, s.condition, min(s.time) AS since, max(s.time) AS last_change, \
                  first_value(s.level {latest}) AS level, first_value(s.level_rank {latest}) AS level_rank, \
                  first_value(s.poller {latest}) AS poller, first_value(s.details {latest}) AS details, \
                  first_value(s.event_id {latest}) AS event_id \
           FROM s JOIN open ON s.tenant = open.tenant AND s.node = open.node \
                AND s.element = open.element AND s.condition = open.condition \
           WHERE s.state = 'down' AND (open.last_up IS NULL OR s.time > open.last_up) \
           GROUP BY s.tenant, s.node, s.element, s.condition) \
         SELECT tenant, node, condition AS event, element, level, level_rank, since AS start_time, \
                last_change, to_unixtime(now()) - to_unixtime(since) AS duration_s, \
                poller, details, event_id \
         FROM run"
    )
}

// One row per poller that sent a heartbeat or a recent event. Both sides
// have one row per (tenant, poller), so a full join gives each poller once.
// The last heartbeat is picked with ordered aggregates, which hold a row per
// poller, not with row_number(), which sorted every heartbeat kept.
// (A UNION of the keys joined back to both sides read each table twice:
// DataFusion inlines CTEs.)
fn pollers(t: PollerThresholds) -> String {
    let late = t.late_after.as_secs();
    let down = t.down_after.as_secs();
    let latest = "ORDER BY time DESC, seq DESC";
    format!(
        "WITH last_hb AS (\
           SELECT tenant, poller, first_value(epoch {latest}) AS epoch, first_value(seq {latest}) AS seq, \
                  max(time) AS time, first_value(spool_depth {latest}) AS spool_depth \
           FROM heartbeats GROUP BY tenant, poller), \
         ev AS (\
           SELECT tenant, poller, count(*) AS recent, max(time) AS last_event FROM events \
           WHERE time >= now() - INTERVAL '10 minutes' GROUP BY tenant, poller) \
         SELECT coalesce(h.tenant, ev.tenant) AS tenant, coalesce(h.poller, ev.poller) AS poller, \
                h.epoch, h.seq AS last_seq, h.time AS last_heartbeat, \
                to_unixtime(now()) - to_unixtime(h.time) AS seconds_since, \
                CAST(coalesce(ev.recent, 0) AS DOUBLE) / 10.0 AS events_per_minute, \
                ev.last_event, h.spool_depth, \
                CASE WHEN h.time IS NULL THEN 'down' \
                     WHEN to_unixtime(now()) - to_unixtime(h.time) > {down} THEN 'down' \
                     WHEN to_unixtime(now()) - to_unixtime(h.time) > {late} THEN 'late' \
                     ELSE 'up' END AS status \
         FROM last_hb h FULL JOIN ev ON h.tenant = ev.tenant AND h.poller = ev.poller"
    )
}

/// Gaps in the union of receipt ranges per (tenant, poller, epoch), plus the
/// tail missing against the highest seq a heartbeat reported. Seqs start at
/// 1, so a first range that starts later is a gap too.
const LOSS_AUDIT: &str = "\
WITH ordered AS (\
  SELECT tenant, poller, epoch, seq_start, seq_end, \
         max(seq_end) OVER (PARTITION BY tenant, poller, epoch ORDER BY seq_start, seq_end \
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered \
  FROM receipts), \
gaps AS (\
  SELECT tenant, poller, epoch, coalesce(covered, 0) + 1 AS first_missing, \
         seq_start - coalesce(covered, 0) - 1 AS missing, 'gap' AS kind \
  FROM ordered WHERE seq_start > coalesce(covered, 0) + 1), \
reported AS (SELECT tenant, poller, epoch, max(seq) AS last_seq FROM heartbeats GROUP BY tenant, poller, epoch), \
received AS (SELECT tenant, poller, epoch, max(seq_end) AS last_seq FROM receipts GROUP BY tenant, poller, epoch), \
tail AS (\
  SELECT r.tenant, r.poller, r.epoch, coalesce(x.last_seq, 0) + 1 AS first_missing, \
         r.last_seq - coalesce(x.last_seq, 0) AS missing, 'tail' AS kind \
  FROM reported r LEFT JOIN received x ON r.tenant = x.tenant AND r.poller = x.poller AND r.epoch = x.epoch \
  WHERE r.last_seq > coalesce(x.last_seq, 0)) \
SELECT tenant, poller, epoch, first_missing, missing, kind FROM gaps \
UNION ALL SELECT tenant, poller, epoch, first_missing, missing, kind FROM tail";
