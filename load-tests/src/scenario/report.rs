//! What a scenario run reports.

use std::collections::BTreeMap;

use serde::Serialize;

use super::driver::QueryStats;
use super::plan::Name;

/// The outcome of one scenario, as reported and written to `--report`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Scenario.
    pub scenario: Name,
    /// Seed (reproduces the fault schedule and the load).
    pub seed: u64,
    /// Whether the short version ran.
    pub short: bool,
    /// The command that reproduces it.
    pub command: String,
    /// Seconds of load.
    pub duration_s: u64,
    /// The faults injected, in order, with their time from the start.
    pub faults: Vec<String>,
    /// Events offered (distinct event ids that should be stored).
    pub offered_events: u64,
    /// Messages offered that must be rejected.
    pub offered_rejects: u64,
    /// Rows stored for the run's tenants.
    pub stored: u64,
    /// DLQ records by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Events offered but not stored, plus seqs missing in `loss_audit`.
    pub lost: u64,
    /// Rows stored more than once.
    pub duplicated: u64,
    /// Largest delay from an event's time to its ingestion, seconds (the
    /// query service sees a commit within its refresh interval after that).
    pub max_delay_s: f64,
    /// Per poller: largest delay and spool depth.
    pub pollers: BTreeMap<String, PollerOutcome>,
    /// Query clients' results (scenarios with query load).
    pub queries: Option<QueryStats>,
    /// RSS per process: `(name, first MiB, last MiB, slope MiB/min over the second half)`.
    pub rss: Vec<(String, f64, f64, f64)>,
    /// Processes that died without being killed by the scenario.
    pub unexpected_exits: Vec<String>,
    /// Verification lines that did not match.
    pub mismatches: Vec<String>,
    /// Whether everything matched.
    pub passed: bool,
}

/// What one poller went through, from the tables.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollerOutcome {
    /// Largest `ingested_at − time` of its events, seconds.
    pub max_delay_s: f64,
    /// Largest spool depth its heartbeats reported.
    pub max_spool_depth: i64,
}

/// The report of one scenario as text.
pub fn render(o: &Outcome) -> String {
    let mut s = String::new();
    let row = |s: &mut String, k: &str, v: String| s.push_str(&format!("  {k:<22} {v}\n"));
    row(&mut s, "result", if o.passed { "PASSED".into() } else { "FAILED".into() });
    row(&mut s, "reproduce", o.command.clone());
    row(&mut s, "faults", format!("{} injected", o.faults.len()));
    for f in &o.faults {
        s.push_str(&format!("      {f}\n"));
    }
    row(&mut s, "events offered", o.offered_events.to_string());
    row(&mut s, "stored", o.stored.to_string());
    row(&mut s, "rejects offered", o.offered_rejects.to_string());
    row(&mut s, "rejected (DLQ)", format!("{} {:?}", o.rejected.values().sum::<u64>(), o.rejected));
    row(&mut s, "lost", o.lost.to_string());
    row(&mut s, "duplicated", o.duplicated.to_string());
    row(&mut s, "max delay", format!("{:.1} s (event time → ingested)", o.max_delay_s));
    for (p, x) in &o.pollers {
        row(&mut s, &format!("poller {p}"), format!("max delay {:.1} s, max spool depth {}", x.max_delay_s, x.max_spool_depth));
    }
    if let Some(q) = &o.queries {
        row(&mut s, "queries", format!("{} ok, {} limited, {} failed, {} breaches, slowest {} ms", q.ok, q.limited, q.failed, q.breaches, q.max_ms));
        for e in &q.examples {
            s.push_str(&format!("      {e}\n"));
        }
    }
    for (p, a, b, slope) in &o.rss {
        row(&mut s, &format!("rss {p}"), format!("{a:.0} → {b:.0} MiB, slope {slope:+.2} MiB/min (second half)"));
    }
    for u in &o.unexpected_exits {
        row(&mut s, "UNEXPECTED EXIT", u.clone());
    }
    for m in &o.mismatches {
        row(&mut s, "MISMATCH", m.clone());
    }
    s
}

