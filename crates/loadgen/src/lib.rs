//! handoff-loadgen
