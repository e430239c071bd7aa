//! `estate-poller`: the edge agent that runs next to each NMIS poller and
//! ships its events to Kafka, with zero loss, provably.
//!
//! It tails an NMIS `event.log` (or reads JSON lines), maps NMIS's stateful
//! events to `state` ([`nmis::STATEFUL_PAIRS`]), stamps every message with
//! tenant, poller id, `epoch`, `seq` and the derived `event_id`
//! (`estate_schemas::derive_event_id`, so mirror agents and ingest agree),
//! appends it to a durable disk spool, and forwards the spool in order with
//! an idempotent, acks=all producer.
//!
//! Guarantees (see `docs/poller.md`):
//! - **No loss.** A record leaves the spool only after the broker
//!   acknowledged it; the spool survives broker outages of any length and
//!   agent crashes; at its size limit the agent stops reading input
//!   (backpressure) and never drops.
//! - **Seq continuity.** `seq` is assigned at append and is durable (under the
//!   fsync policy) before the record can be sent; a restart resumes after the
//!   last durable record, so no seq is reused or skipped. `epoch` bumps when
//!   the spool state is lost.
//! - **Order.** Records are produced in seq order to one partition (key =
//!   tenant) with idempotence, so they land in seq order.
//! - **No line twice.** The input position is stored in every spooled record;
//!   after a restart, reading resumes just after the last spooled line, across
//!   rename+create and copy-truncate rotations. Records a crashed incarnation
//!   delivered but had not marked acknowledged are found in the topic and not
//!   re-sent (best effort; ingest deduplicates by `event_id` regardless).

mod agent;
mod config;
mod error;
#[cfg(test)]
mod nmis_fuzz;
mod input;
mod metrics;
pub mod nmis;
mod sender;
mod spool;
mod state;
mod tail;
pub mod wire;

pub use agent::run;
pub use config::{Compression, Listen, Mode, PollerArgs, parse_addr, parse_duration, parse_fsync, parse_kv, parse_size};
pub use error::{Error, ErrorKind, Result};
pub use input::{Item, parse_json, parse_nmis, stamp_json};
pub use metrics::Metrics;
pub use sender::{HEADER_EPOCH, HEADER_POLLER, HEADER_SEQ};
pub use spool::{FsyncPolicy, HEADER_BYTES, Record, Recovered, Spool, SpoolConfig, SpoolReader};
pub use state::{InputPos, KafkaCoord, SpoolPos, SpoolState};
pub use tail::{Line, Tailer};
