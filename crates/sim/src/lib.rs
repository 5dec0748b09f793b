//! The deterministic simulation of live moves. See [`world`] for what it models.

#![warn(missing_docs)]

pub mod world;

pub use world::*;
