//! The load a scenario offers and what it watches while it runs: the
//! pollers' input files, the query clients, the freshness probe and the RSS
//! sampler. Each runs on its own thread until a shared stop flag is set.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::verify;

/// One poller's input file.
#[derive(Debug)]
pub struct Input {
    /// Tenant of the poller reading it.
    pub tenant: String,
    /// Poller id.
    pub poller: String,
    /// The JSON-lines file the poller tails.
    pub path: PathBuf,
    file: File,
    next: u64,
}

impl Input {
    /// Creates (empty) the input file of one poller.
    pub fn create(tenant: &str, poller: &str, path: PathBuf) -> Result<Input> {
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(Error::io("creating input", &path))?;
        Ok(Input { tenant: tenant.to_owned(), poller: poller.to_owned(), path, file, next: 0 })
    }
}

/// What the driver wrote: the ground truth of the poller side.
#[derive(Debug, Default, Clone)]
pub struct Offered {
    /// Distinct events per tenant (every line carries a unique event_id).
    pub events: BTreeMap<String, u64>,
    /// Lines written with a time beyond ingest's `--max-future`: expected as
    /// `time_out_of_range` rejects.
    pub far_future: u64,
    /// Of the events, lines with a valid but ancient time (2001).
    pub ancient: u64,
    /// Of the events, lines claiming another tenant in their payload (the
    /// poller stamps its own, so they belong to the poller's tenant).
    pub foreign_claims: u64,
}

const KINDS: [(&str, &str, Option<&str>); 6] = [
    ("Node Down", "Critical", Some("down")),
    ("Node Up", "Normal", Some("up")),
    ("Interface Down", "Major", Some("down")),
    ("Interface Up", "Normal", Some("up")),
    ("Proactive CPU", "Warning", Some("down")),
    ("SNMP Down", "Minor", None),
];

/// Writes event lines to the pollers' input files at `rate` lines per
/// second in all, round robin, until `stop`. With `hostile`, one line in
/// fifty is far-future, ancient or claims another tenant.
pub fn drive(inputs: &mut [Input], rate: f64, run_id: &str, hostile: bool, seed: u64, stop: &AtomicBool) -> Result<Offered> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut off = Offered::default();
    let start = Instant::now();
    let mut written = 0u64;
    let tenants: Vec<String> = inputs.iter().map(|i| i.tenant.clone()).collect();
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        let mut bufs: Vec<String> = vec![String::new(); inputs.len()];
        while written < due {
            let k = (written % inputs.len() as u64) as usize;
            let inp = &mut inputs[k];
            let n = inp.next;
            inp.next += 1;
            let now = chrono::Utc::now().timestamp_millis();
            let (event, level, state) = KINDS[rng.random_range(0..KINDS.len())];
            let node = rng.random_range(0..50);
            let mut line = serde_json::json!({
                "type": "event",
                "event_id": format!("{run_id}-{}-{n}", inp.poller),
                "time": now,
                "node": format!("{}-node-{node:03}", inp.tenant),
                "node_uuid": format!("{}-uuid-{node:03}", inp.tenant),
                "event": event,
                "element": if event.starts_with("Interface") { format!("Gi0/{}", n % 48) } else { String::new() },
                "level": level,
                "details": format!("scenario {run_id} line {n}"),
                "attrs": {"site": inp.poller.clone()},
            });
            if let Some(s) = state {
                line["state"] = Value::from(s);
            }
            let mut counted = true;
            if hostile && rng.random_bool(0.02) {
                match rng.random_range(0..3) {
                    0 => {
                        line["time"] = Value::from(now + 30 * 86_400_000);
                        off.far_future += 1;
                        counted = false;
                    }
                    1 => {
                        line["time"] = Value::from(978_307_200_000i64 + n as i64);
                        off.ancient += 1;
                    }
                    _ => {
                        let other = tenants.iter().find(|t| **t != inp.tenant).cloned().unwrap_or_else(|| "someone-else".into());
                        line["tenant"] = Value::from(other);
                        off.foreign_claims += 1;
                    }
                }
            }
            if counted {
                *off.events.entry(inp.tenant.clone()).or_default() += 1;
            }
            bufs[k].push_str(&line.to_string());
            bufs[k].push('\n');
            written += 1;
        }
        for (inp, b) in inputs.iter_mut().zip(&bufs) {
            if !b.is_empty() {
                inp.file.write_all(b.as_bytes()).map_err(Error::io("writing input", &inp.path))?;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(off)
}

/// The standard queries of `query/queries/`, run by the query clients.
pub const STANDARD_QUERIES: [&str; 8] = [
    include_str!("../../../query/queries/01_events_per_tenant_level_24h.sql"),
    include_str!("../../../query/queries/02_top_nodes.sql"),
    include_str!("../../../query/queries/03_active_critical.sql"),
    include_str!("../../../query/queries/04_node_time_range.sql"),
    include_str!("../../../query/queries/05_rate_per_minute.sql"),
    include_str!("../../../query/queries/06_poller_health.sql"),
    include_str!("../../../query/queries/07_loss_audit.sql"),
    include_str!("../../../query/queries/08_nodes_by_level.sql"),
];

/// Isolation probes: every tenant a token can see, per table and view.
const PROBES: [&str; 5] = [
    "SELECT DISTINCT tenant FROM events",
    "SELECT DISTINCT tenant FROM receipts",
    "SELECT DISTINCT tenant FROM heartbeats",
    "SELECT DISTINCT tenant FROM pollers",
    "SELECT DISTINCT tenant FROM active_events",
];

/// A token for the query clients: `tenant` is `None` for the operator.
#[derive(Debug, Clone)]
pub struct ClientToken {
    /// Bearer token.
    pub token: String,
    /// Its tenant, or `None` for an operator token.
    pub tenant: Option<String>,
}

/// What the query clients saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct QueryStats {
    /// Queries answered.
    pub ok: u64,
    /// Queries refused by the service's own limits (408, 413, 429, memory).
    pub limited: u64,
    /// Other failures (5xx, connection errors, bad SQL): must be zero.
    pub failed: u64,
    /// Isolation breaches: a tenant token saw another tenant. Must be zero.
    pub breaches: u64,
    /// The first few failures and breaches, for the report.
    pub examples: Vec<String>,
    /// Slowest answer, ms.
    pub max_ms: u64,
}

/// Runs `clients` query clients until `stop`, each cycling through the
/// standard queries and the isolation probes under one of `tokens`.
pub fn query_clients(url: &str, tokens: &[ClientToken], clients: usize, stop: &Arc<AtomicBool>) -> Arc<Mutex<QueryStats>> {
    let stats = Arc::new(Mutex::new(QueryStats::default()));
    for c in 0..clients {
        let (url, tok, stop, stats) = (url.to_owned(), tokens[c % tokens.len()].clone(), stop.clone(), stats.clone());
        std::thread::spawn(move || {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let all: Vec<&str> = STANDARD_QUERIES.iter().copied().chain(PROBES).collect();
                let q = all[i % all.len()];
                i += 1;
                let t0 = Instant::now();
                let res = verify::sql(&url, &tok.token, q, Duration::from_secs(90));
                let ms = t0.elapsed().as_millis() as u64;
                let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                s.max_ms = s.max_ms.max(ms);
                match res {
                    Ok(rows) => {
                        s.ok += 1;
                        if let Some(own) = &tok.tenant {
                            let foreign: Vec<String> = rows
                                .iter()
                                .filter_map(|r| r.get("tenant").and_then(Value::as_str))
                                .filter(|t| *t != own.as_str())
                                .map(str::to_owned)
                                .collect();
                            if !foreign.is_empty() {
                                s.breaches += 1;
                                if s.examples.len() < 10 {
                                    s.examples.push(format!("BREACH: token of {own} saw {foreign:?} in {q:?}"));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        let text = e.to_string();
                        let limited = ["HTTP 408", "HTTP 413", "HTTP 429"].iter().any(|c| text.contains(c))
                            || (text.contains("HTTP 400") && text.to_ascii_lowercase().contains("memory"));
                        if limited {
                            s.limited += 1;
                        } else {
                            s.failed += 1;
                            if s.examples.len() < 10 {
                                s.examples.push(format!("FAILED: {text}"));
                            }
                        }
                    }
                }
            }
        });
    }
    stats
}

/// Least-squares slope of `(seconds, bytes)` samples, in MiB per minute.
pub fn slope_mib_per_min(samples: &[(f64, u64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in samples {
        num += (x - mx) * (*y as f64 - my);
        den += (x - mx) * (x - mx);
    }
    if den == 0.0 { 0.0 } else { num / den * 60.0 / (1 << 20) as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_is_mib_per_minute() {
        let flat: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 10.0, 100 << 20)).collect();
        assert_eq!(slope_mib_per_min(&flat), 0.0);
        let growing: Vec<(f64, u64)> = (0..10).map(|i| (i as f64 * 60.0, (100 + 2 * i) << 20)).collect();
        assert!((slope_mib_per_min(&growing) - 2.0).abs() < 1e-9);
        assert_eq!(slope_mib_per_min(&[(0.0, 5)]), 0.0);
    }

    #[test]
    fn the_driver_writes_unique_events_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = vec![
            Input::create("ta", "ta-p1", dir.path().join("a.jsonl")).unwrap(),
            Input::create("tb", "tb-p1", dir.path().join("b.jsonl")).unwrap(),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            s2.store(true, Ordering::Relaxed);
        });
        let off = drive(&mut inputs, 2000.0, "r1", true, 7, &stop).unwrap();
        t.join().unwrap();
        let mut ids = std::collections::HashSet::new();
        let mut per_tenant: BTreeMap<String, u64> = BTreeMap::new();
        let mut future = 0;
        for (f, tenant) in [("a.jsonl", "ta"), ("b.jsonl", "tb")] {
            for l in std::fs::read_to_string(dir.path().join(f)).unwrap().lines() {
                let v: Value = serde_json::from_str(l).unwrap();
                assert!(ids.insert(v["event_id"].as_str().unwrap().to_owned()), "event ids are unique");
                if v["time"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis() + 86_400_000 {
                    future += 1;
                } else {
                    *per_tenant.entry(tenant.to_owned()).or_default() += 1;
                }
            }
        }
        assert!(ids.len() > 100, "wrote {}", ids.len());
        assert_eq!(per_tenant, off.events);
        assert_eq!(future, off.far_future);
    }
}
