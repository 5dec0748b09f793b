//! The NF contract: what a network function implements so that handoff can steer, run, move
//! and replicate it without knowing what it does.
//!
//! A *function* (an NF type such as `vmme`) is a Rust type implementing [`Function`]. The rules,
//! which every implementation must keep (see `docs/nf-contract.md` for the author's guide):
//!
//! 1. **Classification is pure.** [`Function::classify`] looks at the bytes of one inbound
//!    datagram and says whether it creates, updates or deletes a session (and which), or is
//!    stateless. It has no access to state, so the steer can run it on the signal path.
//!    Malformed input is an error value, never a panic.
//! 2. **Processing is deterministic.** [`Function::process`] sees the session (if any), the
//!    prepared signal and `now`, the timestamp the steer stamped on the signal. It must not read
//!    the wall clock, a random source, or any state outside the session. Timers are signals too:
//!    the framework calls [`Function::on_timer`] for sessions whose [`Function::deadline_us`] has
//!    passed when a `Tick` arrives. Two copies fed the same signals end in byte-identical state.
//! 3. **State is records.** Each session serialises to bytes ([`Function::encode_session`]);
//!    the framework owns the session table (`handoff-state`), so it can snapshot, stream, digest
//!    and persist sessions, and count how often each changes.
//! 4. **Preprocessing.** [`Function::prepare`] parses a signal into the shape of the change it will
//!    make. The framework always processes prepared signals, so an update buffered while its
//!    session is still in flight (during a move) is stored already prepared and applies fast.
//! 5. **Outputs are classified** `Immediate` or `Gated` by a [`Ruleset`] keyed by the output's
//!    message type, replaceable at run time ([`RulesetHandle`]).

#![warn(missing_docs)]

mod contract;
mod ruleset;
pub mod runtime;

pub use contract::*;
pub use ruleset::*;
