//! vMME: the reference function of handoff, a simplified LTE Mobility Management Entity that
//! holds one UE context per subscriber (TS 23.401 §5.7.2) and implements
//! [`handoff_function::Function`].
//!
//! - [`codec`]: S1AP-lite, the binary encoding of signals and responses (`docs/s1ap-lite.md`).
//! - [`context`]: the UE context and its record format.
//! - [`function`]: the [`Vmme`] type: classification, deterministic processing, timers, ruleset.

#![warn(missing_docs)]

pub mod codec;
pub mod context;
pub mod function;

pub use codec::*;
pub use context::*;
pub use function::*;
