//! handoff-node
