//! A simulated estate written straight to the Delta tables.

use estate_ingest::{DeltaSink, Store, TableKind};
use estate_schemas::{
    DecodeContext, EventsBuilder, HeartbeatsBuilder, NodesBuilder, ReceiptRow, ReceiptsBuilder, Record, Source,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Tenants (`tenant-001` …).
    pub tenants: usize,
    /// Pollers per tenant.
    pub pollers: usize,
    /// Nodes per tenant (`tenant-001-node-00000` …), spread over its pollers.
    pub nodes: usize,
    /// Events in all.
    pub events: usize,
    /// Events per commit (one commit per table per flush, as ingest does).
    pub commit_rows: usize,
    /// Event times span this many hours, ending 30 minutes before `now_ms`.
    pub span_hours: i64,
    /// The clock the data is relative to.
    pub now_ms: i64,
    /// Random seed.
    pub seed: u64,
}

/// What was generated, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Events written.
    pub events: usize,
    /// Commits per table.
    pub commits: usize,
}

/// (raise, clear, level of the raise, element)
const STATEFUL: [(&str, &str, &str, &str); 4] = [
    ("Node Down", "Node Up", "Critical", ""),
    ("Interface Down", "Interface Up", "Major", "Gi0/1"),
    ("Proactive CPU", "Proactive CPU Closed", "Minor", ""),
    ("Service Down", "Service Up", "Fatal", "httpd"),
];
const ONE_SHOT: [(&str, &str); 3] =
    [("Node Reset", "Warning"), ("Node Configuration Change", "Warning"), ("Proactive Response Time", "Normal")];
const NODE_LEVELS: [&str; 6] = ["Normal", "Normal", "Normal", "Warning", "Minor", "Critical"];

fn tenant_name(t: usize) -> String {
    format!("tenant-{:03}", t + 1)
}

struct Poller {
    tenant: String,
    id: String,
    seq: i64,
    committed_from: i64,
    /// Seqs skipped on purpose (a gap the loss audit must report).
    skip: Option<(i64, i64)>,
}

/// Writes the estate. Pollers: `tenant-002-p01` skips seqs 100..=104 (a
/// gap); `tenant-003-p01` reports 3 seqs more in its last heartbeat than
/// were received (a lost tail); `tenant-001-p02`'s last heartbeat is 2 h old
/// (a `down` poller).
pub async fn generate(store: &Store, spec: &Spec) -> anyhow::Result<Summary> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut pollers: Vec<Poller> = Vec::new();
    for t in 0..spec.tenants {
        for p in 0..spec.pollers {
            let tenant = tenant_name(t);
            let id = format!("{tenant}-p{:02}", p + 1);
            let skip = (t == 1 && p == 0).then_some((100, 104));
            pollers.push(Poller { tenant, id, seq: 0, committed_from: 1, skip });
        }
    }
    let mut sinks = Vec::new();
    for kind in TableKind::ALL {
        sinks.push(DeltaSink::open(store, kind).await?);
    }
    let start = spec.now_ms - spec.span_hours * 3_600_000 - 1_800_000;
    let step = (spec.span_hours * 3_600_000) as f64 / spec.events.max(1) as f64;
    // Open stateful conditions per (tenant, node, kind).
    let mut open = std::collections::HashSet::new();
    let mut summary = Summary::default();
    let mut messages: Vec<(usize, String)> = Vec::with_capacity(spec.commit_rows.min(spec.events) + 64);

    // Node snapshots first.
    for t in 0..spec.tenants {
        for n in 0..spec.nodes {
            let pi = t * spec.pollers + n % spec.pollers;
            let level = NODE_LEVELS[rng.random_range(0..NODE_LEVELS.len())];
            let msg = node_msg(&mut pollers[pi], n, start, level);
            messages.push((pi, msg));
        }
    }
    for i in 0..spec.events {
        let t = rng.random_range(0..spec.tenants);
        let n = rng.random_range(0..spec.nodes);
        let pi = t * spec.pollers + n % spec.pollers;
        let time = start + (i as f64 * step) as i64;
        let roll = rng.random_range(0..10);
        let (event, level, state, element) = if roll < 7 {
            let k = rng.random_range(0..STATEFUL.len());
            let (raise, clear, level, element) = STATEFUL[k];
            if open.remove(&(t, n, k)) {
                (clear, "Normal", Some("up"), element)
            } else {
                open.insert((t, n, k));
                (raise, level, Some("down"), element)
            }
        } else {
            let (e, l) = ONE_SHOT[rng.random_range(0..ONE_SHOT.len())];
            (e, l, None, "")
        };
        let msg = event_msg(&mut pollers[pi], n, time, event, level, state, element);
        messages.push((pi, msg));
        if messages.len() >= spec.commit_rows {
            commit(&mut sinks, &mut pollers, &mut messages, spec.now_ms, false).await?;
            summary.commits += 1;
            if summary.commits % 300 == 0 {
                eprintln!("  {} flushes, {} events", summary.commits, summary.events + 1);
            }
        }
        summary.events += 1;
    }
    // Last heartbeats.
    for (pi, p) in pollers.iter_mut().enumerate() {
        let old = p.tenant == "tenant-001" && p.id.ends_with("-p02");
        let time = if old { spec.now_ms - 7_200_000 } else { spec.now_ms };
        messages.push((pi, heartbeat_msg(p, time)));
    }
    commit(&mut sinks, &mut pollers, &mut messages, spec.now_ms, true).await?;
    summary.commits += 1;
    Ok(summary)
}

fn next_seq(p: &mut Poller) -> i64 {
    p.seq += 1;
    if let Some((a, b)) = p.skip
        && p.seq == a
    {
        p.seq = b + 1;
    }
    p.seq
}

fn node_msg(p: &mut Poller, n: usize, time: i64, level: &str) -> String {
    let seq = next_seq(p);
    format!(
        r#"{{"v":1,"type":"node","tenant":"{t}","poller":"{id}","epoch":1,"seq":{seq},"time":{time},"node":"{t}-node-{n:05}","level":"{level}","attrs":{{"role":"core"}}}}"#,
        t = p.tenant,
        id = p.id
    )
}

fn event_msg(p: &mut Poller, n: usize, time: i64, event: &str, level: &str, state: Option<&str>, element: &str) -> String {
    let seq = next_seq(p);
    let state = state.map(|s| format!(r#","state":"{s}""#)).unwrap_or_default();
    format!(
        r#"{{"v":1,"type":"event","tenant":"{t}","poller":"{id}","epoch":1,"seq":{seq},"time":{time},"node":"{t}-node-{n:05}","event":"{event}","element":"{element}","level":"{level}"{state},"details":"generated"}}"#,
        t = p.tenant,
        id = p.id
    )
}

fn heartbeat_msg(p: &mut Poller, time: i64) -> String {
    let seq = next_seq(p);
    format!(
        r#"{{"v":1,"type":"heartbeat","tenant":"{t}","poller":"{id}","epoch":1,"seq":{seq},"time":{time},"spool_depth":0}}"#,
        t = p.tenant,
        id = p.id
    )
}

async fn commit(
    sinks: &mut [DeltaSink],
    pollers: &mut [Poller],
    messages: &mut Vec<(usize, String)>,
    now_ms: i64,
    last: bool,
) -> anyhow::Result<()> {
    let (mut ev, mut nodes, mut hb, mut rec) =
        (EventsBuilder::default(), NodesBuilder::default(), HeartbeatsBuilder::default(), ReceiptsBuilder::default());
    for (i, (pi, m)) in messages.iter().enumerate() {
        let tenant = pollers[*pi].tenant.as_str();
        let ctx = DecodeContext { tenant: Some(tenant), max_bytes: 1 << 20, now_ms, max_future_ms: 86_400_000 };
        let src = Source { topic: "estate.events", partition: 0, offset: i as i64 };
        match estate_schemas::decode(m.as_bytes(), &ctx).map_err(|r| anyhow::anyhow!("{m}: {:?}", r.reason))? {
            Record::Event(e) => ev.append(tenant, &e, now_ms, src),
            Record::Node(n) => nodes.append(tenant, &n, now_ms),
            Record::Heartbeat(h) => hb.append(tenant, &h, now_ms),
        }
    }
    for p in pollers.iter_mut() {
        // tenant-003-p01's last three messages never arrive: a lost tail.
        let end = if last && p.tenant == "tenant-003" && p.id.ends_with("-p01") { p.seq - 3 } else { p.seq };
        let mut ranges = vec![(p.committed_from, end)];
        if let Some((a, b)) = p.skip
            && p.committed_from <= a
            && end > b
        {
            ranges = vec![(p.committed_from, a - 1), (b + 1, end)];
        }
        for (s, e) in ranges {
            if e >= s {
                rec.push(ReceiptRow {
                    tenant: p.tenant.clone(),
                    poller: p.id.clone(),
                    epoch: 1,
                    seq_start: s,
                    seq_end: e,
                    stored: e - s + 1,
                    duplicates: 0,
                    rejected: 0,
                });
            }
        }
        p.committed_from = p.seq + 1;
    }
    let batches = [ev.finish()?, nodes.finish()?, hb.finish()?, rec.finish(now_ms)?];
    for (sink, batch) in sinks.iter_mut().zip(batches) {
        sink.commit_fenced(&[], &[batch]).await?;
    }
    messages.clear();
    Ok(())
}
