//! The load generator and its oracle.
//!
//! [`run`] simulates N UEs against a vMME service address: every UE attaches first (a closed
//! loop with a bounded window), then signals are sent open-loop at a fixed rate, each slot going
//! to a UE drawn from a Zipf distribution, one outstanding transaction per UE, with
//! retransmission on timeout. Every signal and answer is recorded.
//!
//! [`oracle::check`] then replays, per UE, the transactions that were answered through the vMME
//! function itself (processing is deterministic) and compares the result with the owner's state
//! dump, and each recorded answer with the answer the reference computes.

#![warn(missing_docs)]

mod driver;
pub mod oracle;
mod ue;

pub use driver::{
    popularity_slot, run, run_sharded, LatencyReport, LoadConfig, LoadReport, Progress, MAX_SHARDS,
};
pub use ue::{Transaction, UeHistory};
