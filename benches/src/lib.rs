//! `estate-benches`: the data set generator behind the query benchmark and
//! the DuckDB correctness check, plus (in `scripts/`) the side-by-side
//! comparison scripts.
//!
//! The generator writes the production layout with production code: every
//! message is wire-format JSON decoded by `estate-schemas` exactly as ingest
//! decodes it, and every commit goes through ingest's `DeltaSink`. It is
//! deterministic for a given [`Spec`] (times are relative to `now`).

pub mod dataset;
pub mod pipeline;
