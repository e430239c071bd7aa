//! Integration tests of the `estate` binary against real brokers and real
#![allow(unreachable_pub)] // test-only modules share helpers with `pub`
//! store directories. One test binary for the crate (see STYLE.md).

mod capacity;
mod dlq;
mod harness;
mod ingest;
mod lifecycle;
mod loadgen;
mod poller;
mod query;
mod scenario;
mod standalone;
