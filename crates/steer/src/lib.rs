//! handoff-steer
