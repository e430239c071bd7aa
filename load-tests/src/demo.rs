//! The demo estate of `estate standalone --demo`: the loadgen simulator run
//! without end at a modest rate, so a new user has live data at once.
//!
//! Names are stable across restarts (fixed seed and run id), so the same
//! tenants, pollers and nodes carry on; each start is a new `epoch` of every
//! simulated poller, as it would be for a real agent that lost its spool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::producer::Producer as _;

use crate::error::{Error, Result};
use crate::estate::{Estate, EstateConfig, Msg};
use crate::loadgen::{producer, send, send_due};
use crate::mix::{DEFAULT_MIX, Mix};

/// Shape and pace of the demo estate.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// librdkafka settings passed through.
    pub kafka_opts: Vec<(String, String)>,
    /// Events topic.
    pub topic: String,
    /// Tenants (`demo-t01` …).
    pub tenants: usize,
    /// Pollers per tenant.
    pub pollers: usize,
    /// Nodes per poller.
    pub nodes: usize,
    /// Messages per second, all kinds.
    pub rate: f64,
    /// Heartbeat interval of every simulated poller.
    pub heartbeat_interval: Duration,
}

impl DemoConfig {
    /// The demo tenant ids, in order.
    pub fn tenant_ids(&self) -> Vec<String> {
        (1..=self.tenants).map(|t| format!("{DEMO_PREFIX}-t{t:02}")).collect()
    }
}

/// Tenant id prefix of the demo estate.
pub const DEMO_PREFIX: &str = "demo";

/// Counts of a running demo.
#[derive(Debug, Default)]
pub struct DemoStats {
    /// Messages handed to the producer.
    pub sent: AtomicU64,
}

/// Runs the demo estate on the calling thread until `stop` is set, then
/// flushes the producer. Returns the number of messages delivered.
pub fn run(cfg: &DemoConfig, stop: &AtomicBool, stats: &Arc<DemoStats>) -> Result<u64> {
    if cfg.tenants == 0 || cfg.pollers == 0 || cfg.nodes == 0 || cfg.rate.is_nan() || cfg.rate <= 0.0 {
        return Err(Error::Config("the demo needs at least one tenant, poller and node, and a positive rate".into()));
    }
    let mix = Mix::parse(DEFAULT_MIX)?;
    let started = chrono::Utc::now();
    let mut estate = Estate::new(
        EstateConfig {
            tenants: cfg.tenants,
            pollers: cfg.pollers,
            nodes: cfg.nodes,
            duplicates: 0.02,
            malformed: 0.002,
            mirror_pairs: 1,
            tenant_prefix: DEMO_PREFIX.into(),
            run_id: "demo".into(),
            epoch: started.timestamp(),
            topic: cfg.topic.clone(),
            per_tenant_topic: false,
            too_large_bytes: 1_100_000,
            seed: 20_261_124,
        },
        mix,
    );
    let producer = producer(&cfg.brokers, &cfg.kafka_opts, 1_100_000)?;
    let start = Instant::now();
    let mut next_hb = start;
    let mut sent = 0u64;
    let mut out: Vec<Msg> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let due = (cfg.rate * start.elapsed().as_secs_f64()) as u64;
        let hb_before = next_hb;
        sent += send_due(&mut estate, &producer, &mut out, now_ms, sent, due, (&mut next_hb, cfg.heartbeat_interval))?;
        if next_hb != hb_before {
            // The ground truth is of no use here; keep memory flat.
            estate.forget_distinct();
        }
        stats.sent.store(sent, Ordering::Relaxed);
        producer.poll(Duration::ZERO);
        if out.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    out.clear();
    estate.heartbeats(chrono::Utc::now().timestamp_millis(), &mut out);
    for m in &out {
        send(&producer, m)?;
    }
    sent += out.len() as u64;
    stats.sent.store(sent, Ordering::Relaxed);
    producer.flush(Duration::from_secs(30)).map_err(Error::kafka("flushing the demo producer"))?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(Error::Config(format!("{failed} demo messages were not delivered")));
    }
    Ok(sent)
}
