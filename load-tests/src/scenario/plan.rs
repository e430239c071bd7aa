//! The scenarios and the shape of each run.

use std::time::Duration;

use serde::Serialize;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Name {
    /// 1. SIGKILL a random ingest instance every 5–20 s, always restarting it.
    KillIngest,
    /// 2. SIGKILL the broker process and restart it, twice.
    KillBroker,
    /// 3. A poller in its own network namespace loses its link for 60 s.
    WanPartition,
    /// 4. Store latency spikes and 10 % failed writes for a minute.
    StoreFaults,
    /// 5. A poller's spool disk (a small tmpfs) fills up, then space is freed.
    SpoolFull,
    /// 6. Every DLQ reason, far-future and ancient times, foreign tenant claims.
    HostileInput,
    /// 7. Ten query clients (tenant and operator tokens) during scenario 1.
    QueryLoad,
    /// 8. A steady rate for 20 minutes; ingest and query RSS slopes reported.
    Soak,
    /// Every scenario above, one after the other.
    All,
}

impl Name {
    pub(super) fn every() -> [Name; 8] {
        use Name::*;
        [KillIngest, KillBroker, WanPartition, StoreFaults, SpoolFull, HostileInput, QueryLoad, Soak]
    }

    pub(super) fn label(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// The broker a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    /// librdkafka's mock cluster in its own process (`estate broker`): a
    /// Kafka-protocol broker over TCP, in memory.
    Mock,
    /// The tansu broker process, durable on SQLite (needed to kill and
    /// restart the broker; slows down as its log grows, see
    /// docs/reliability.md).
    Tansu,
}

/// Default rate on tansu, whose fetches slow down as its log grows.
pub(super) const TANSU_RATE: f64 = 50.0;

/// The shape of one scenario run.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) name: Name,
    pub(super) duration: Duration,
    /// SIGKILL a random ingest instance every `(min, max)`.
    pub(super) ingest_kills: Option<(Duration, Duration)>,
    /// SIGKILL the broker this many times, evenly spread, down `broker_down` each.
    pub(super) broker_kills: u32,
    pub(super) broker_down: Duration,
    /// Cut the WAN poller's link at `.0` for `.1`.
    pub(super) wan_cut: Option<(Duration, Duration)>,
    /// Start ingest with the fault-injecting store at `.0` for `.1`.
    pub(super) store_faults: Option<(Duration, Duration)>,
    /// Fill the spool disk at `.0` for `.1`.
    pub(super) spool_full: Option<(Duration, Duration)>,
    pub(super) hostile: bool,
    pub(super) query_clients: usize,
    pub(super) broker: BrokerKind,
    /// Ingest's `--dedup-window` (`None`: its default, 1 h).
    pub(super) dedup_window: Option<&'static str>,
}

impl Plan {
    pub(super) fn new(name: Name, short: bool, duration: Option<Duration>) -> Plan {
        let s = |full: u64, short_: u64| Duration::from_secs(if short { short_ } else { full });
        let d = duration.unwrap_or(match name {
            Name::KillIngest | Name::QueryLoad => s(180, 60),
            Name::Soak => s(1200, 120),
            Name::WanPartition => s(120, 60),
            _ => s(120, 60),
        });
        let mut p = Plan {
            name,
            duration: d,
            ingest_kills: None,
            broker_kills: 0,
            broker_down: Duration::from_secs(3),
            wan_cut: None,
            store_faults: None,
            spool_full: None,
            hostile: false,
            query_clients: 0,
            broker: if name == Name::KillBroker { BrokerKind::Tansu } else { BrokerKind::Mock },
            dedup_window: None,
        };
        let at = d / 5;
        let window = |full: u64| if short { d / 3 } else { Duration::from_secs(full) };
        match name {
            Name::KillIngest => p.ingest_kills = Some((Duration::from_secs(5), Duration::from_secs(if short { 12 } else { 20 }))),
            Name::KillBroker => p.broker_kills = 2,
            Name::WanPartition => p.wan_cut = Some((at, window(60))),
            Name::StoreFaults => p.store_faults = Some((at, window(60))),
            Name::SpoolFull => p.spool_full = Some((at, window(30))),
            Name::HostileInput => p.hostile = true,
            Name::QueryLoad => {
                p.ingest_kills = Some((Duration::from_secs(5), Duration::from_secs(20)));
                p.query_clients = 10;
            }
            Name::Soak => {
                p.query_clients = 2;
                // The dedup window is state that grows by design until it is
                // full (1 h by default, longer than the soak): a 5 min window
                // fills in the first half, so the second half shows whether
                // anything else grows.
                p.dedup_window = Some("5m");
            }
            Name::All => unreachable!("expanded before planning"),
        }
        p
    }
}

