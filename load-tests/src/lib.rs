//! `estate-loadgen`: simulated NMIS estates and the end-to-end verifier.
//!
//! `estate loadgen` simulates tenants × pollers × nodes raising and clearing
//! NMIS events (the mix is data: `data/event-mix.json`, derived from NMIS 9's
//! event catalogue), with flaps, node snapshots, heartbeats, mirror pairs,
//! exact duplicates and malformed messages covering every DLQ reason. It
//! produces straight to Kafka at a target rate, stamping messages with the
//! poller's own wire encoder, and writes the ground truth: distinct events
//! per tenant, max seq per (poller, epoch), rejects by reason.
//!
//! `estate verify` asks the query service (HTTP `POST /v1/sql`) and the DLQ
//! topic, compares with the ground truth, prints a table and fails on any
//! mismatch.
//!
//! `estate status` asks the query service and each ingest instance's
//! metrics endpoint for one screen of estate health (see `status`).
//!
//! Guarantees: the ground truth is exact (distinct event ids are counted,
//! not estimated), and a truth file is written only if every message was
//! acknowledged by the broker. Rejects whose seq ingest can read are sent by
//! dedicated junk pollers, so they never open a gap in a real poller's seq.

pub mod capacity;
pub mod demo;
mod error;
pub mod estate;
mod loadgen;
pub mod mix;
pub mod scenario;
pub mod status;
pub mod truth;
pub mod verify;

pub use capacity::{CapacityArgs, run as run_capacity};
pub use error::{Error, Result};
pub use loadgen::{LoadgenArgs, run as run_loadgen};
pub use scenario::{ScenarioArgs, run as run_scenario};
pub use status::{StatusArgs, run as run_status};
pub use truth::Truth;
pub use verify::{VerifyArgs, run as run_verify};

#[cfg(test)]
mod cli_tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    enum Cli {
        Loadgen(Box<LoadgenArgs>),
        Verify(VerifyArgs),
    }

    #[test]
    fn the_command_lines_parse() {
        Cli::command().debug_assert();
        let Cli::Loadgen(l) = Cli::try_parse_from(["x", "loadgen", "--brokers", "b", "--truth", "t.json", "--rate", "50", "--duration", "2s"]).unwrap() else {
            panic!()
        };
        assert_eq!((l.rate, l.duration, l.tenants), (50.0, std::time::Duration::from_secs(2), 3));
        let Cli::Verify(v) = Cli::try_parse_from(["x", "verify", "--truth", "t", "--query-url", "http://h:1", "--token", "s"]).unwrap() else {
            panic!()
        };
        assert!(v.brokers.is_none());
    }
}
