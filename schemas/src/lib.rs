//! `estate-schemas`: the wire contract of estate, with no I/O.
//!
//! This crate decodes, validates and normalises wire format v1 (one JSON
//! object per Kafka message, see `ARCHITECTURE.md`), derives `event_id` when a
//! poller did not send one, and builds the Arrow record batches of the four
//! Delta tables (`events`, `nodes`, `heartbeats`, `receipts`).
//!
//! Guarantees:
//! - Decoding is a pure function of the payload bytes, the authoritative
//!   tenant and the clock value passed in ([`DecodeContext`]); the same input
//!   always gives the same output, which is what makes replay after a crash
//!   exact.
//! - Every rejection carries a machine-readable [`Reason`]; nothing is
//!   dropped without one. Where the payload was readable enough, the
//!   rejection also carries the sender's `(poller, epoch, seq)` so that loss
//!   accounting can tell a rejected message from a lost one.
//! - `event_id` derivation ([`derive_event_id`]) is stable across versions and
//!   platforms: mirror pollers that observe the same transition compute the
//!   same id.

mod batch;
mod decode;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod level;
mod reason;
#[cfg(test)]
mod reference;
mod scan;
mod stateful;
mod tenant;

pub use batch::{
    EventsBuilder, HeartbeatsBuilder, NodesBuilder, ReceiptRow, ReceiptsBuilder, Source,
    events_schema, heartbeats_schema, nodes_schema, receipts_schema, date_of, hour_of,
    PARTITION_COLUMNS,
};
pub use decode::{
    DecodeContext, Event, Heartbeat, NodeSnapshot, Record, Rejection, SeqRef, decode,
    derive_event_id, MIN_TIME_MS,
};
pub use level::{Level, State};
pub use reason::Reason;
pub use stateful::{STATEFUL_PAIRS, condition_of, condition_sql, state_of};
pub use tenant::{is_valid_tenant, TENANT_TOPIC_PREFIX};

#[cfg(test)]
mod tests;
