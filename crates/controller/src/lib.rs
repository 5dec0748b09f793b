//! The controller: the cluster view and the driver of live moves (DESIGN.md "Live move").
//! Never on the signal path: it talks to nodes and steers over the authenticated control
//! protocol, and keeps its state in an embedded store so a restart resumes or aborts cleanly.

#![warn(missing_docs)]

pub mod daemon;
pub mod driver;
pub mod machine;
pub mod ops;
pub mod source;
pub mod store;

pub use machine::{Action, Failure, MoveMachine, MoveSpec, Outcome, Phase, Side};
