//! A deterministic, seeded simulation of a whole live move (DESIGN.md "Live move", "Testing").
//!
//! A discrete-event simulation with a virtual clock (µs) and one seeded RNG: no tokio, no
//! sockets, no wall clock, so a seed replays exactly. It writes no protocol logic of its own:
//! it drives the very cores the daemons run and models only the I/O between them.
//!
//! | role | the core driven here | its shell in the daemons |
//! |---|---|---|
//! | steer service | `handoff_steer::service_core::ServiceCore` (with `route::Route`) | `handoff_steer` service loop |
//! | node instance | `handoff_node::instance_core::InstanceCore` | `handoff_node` instance task |
//! | copy source | `handoff_node::copy_core::{CopySender, Outgoing}` | `handoff_node::copy::copy_to` |
//! | copy destination | `handoff_node::copy_core::CopyReceiver` | `handoff_node::copy` peer session |
//! | function runtime | `handoff_function::runtime::Hosting` and its shadow | (inside the instance core) |
//! | move | `handoff_controller::machine::MoveMachine`; requests from `driver::request_for`, answers read by `driver::outcome_of` | `handoff_controller::driver` |
//!
//! Requests reach the cores as the control listeners pass them on (`SteerRequest::command`),
//! and answers leave as they send them (`control::reply_body`, `CopyReport::of`, the node's
//! answer bodies).
//!
//! # Layout
//!
//! - `world`: the processes, the event queue, the links and the main loop;
//!   - `world::scenario`: fault classes, triggers, the scenario a seed draws, the report and
//!     the run functions ([`run`], [`run_scenario`], [`soak`]);
//!   - `world::function`: the test function ([`SimCounter`]);
//!   - `world::clients`, `world::steer`, `world::nodes`, `world::copy`, `world::controller`:
//!     what each process does;
//!   - `world::crashes` (controller, node and steer crashes, operator aborts) and
//!     `world::faults` (node restarts, retransmission, queue shedding, split crashes, stale
//!     views): the faults;
//!   - `world::checks`: the invariants checked at the end of every run.
//!
//! # Faults
//!
//! Chosen by seed ([`FaultClass`]): delays; lost control requests or replies (a lost reply
//! means the action happened; the driver sees `Unreachable` and backs off); controller crashes
//! (the action in flight is lost; the peer may still carry it out); a destination or source
//! crash, or restart as a new incarnation with no instance, an empty one, or its state; steer
//! crashes (its route state, pending answers and the signals it stamped above a random cut are
//! lost, what it wrote arrives; it restarts from its route file, and a move in progress is
//! re-installed by `rebind` then `serve`), including a crash between a signal's two copies;
//! client retransmission; bounded steer queues that shed; a controller whose view is stale;
//! operator aborts (either API); and a mix.
//!
//! # Invariants
//!
//! After every run, against a reference instance that applied every admitted signal in seq
//! order (see [`SimReport::checked`]): every signal answered exactly once, with the reference's
//! answer; per-key order; the final owner's state equals the reference; the route settles; no
//! seq is stamped twice; every run ends within bounded events and virtual time.
//!
//! # Not modelled
//!
//! The standby/failover protocol, memory limits, a retired link's close after its grace
//! period, the copy's pacing plans, corrupted records (so no digest mismatch and no re-send
//! round), several controllers, more than one node crash or restart per run, and a persisting
//! node that keeps only its table. Time-outs and back-offs are scaled down so a run covers a
//! whole move in a few hundred milliseconds of virtual time.

#![warn(missing_docs)]

pub mod world;

pub use world::*;
