//! Output classification: which outputs reveal state (`Gated`) and which do not (`Immediate`).

use crate::MsgType;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Whether an output may leave before the state that produced it is safe on a standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum OutputClass {
    /// Reveals no state (data, forwarded, keepalive, provisional, reject): leaves at once.
    Immediate = 1,
    /// Reveals state (accepts, acks): held until the epoch that produced it is replicated.
    Gated = 2,
}

impl OutputClass {
    /// Decodes the wire value; `None` for 0 (invalid) or unknown values.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Immediate),
            2 => Some(Self::Gated),
            _ => None,
        }
    }
}

/// One rule: the class of a message type and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// The class.
    pub class: OutputClass,
    /// Why the output has this class, for operators.
    pub reason: String,
}

/// Message type → class. Types with no rule get `default_class` (Gated unless said otherwise:
/// holding an output that need not be held costs latency; releasing one that should be held
/// breaks output commit).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ruleset {
    /// Explicit rules.
    pub rules: BTreeMap<MsgType, Rule>,
    /// Class of unlisted types.
    pub default_class: OutputClass,
}

impl Default for Ruleset {
    fn default() -> Self {
        Self {
            rules: BTreeMap::new(),
            default_class: OutputClass::Gated,
        }
    }
}

impl Ruleset {
    /// Adds or replaces a rule (builder style).
    pub fn with(mut self, msg_type: MsgType, class: OutputClass, reason: &str) -> Self {
        self.rules.insert(
            msg_type,
            Rule {
                class,
                reason: reason.to_owned(),
            },
        );
        self
    }

    /// The class of a message type.
    pub fn classify(&self, msg_type: MsgType) -> OutputClass {
        self.rules
            .get(&msg_type)
            .map_or(self.default_class, |r| r.class)
    }
}

/// A shared, run-time replaceable ruleset. Readers never block; a replacement is seen by the
/// next output classified.
#[derive(Clone, Debug)]
pub struct RulesetHandle(Arc<ArcSwap<Ruleset>>);

impl RulesetHandle {
    /// Wraps an initial ruleset.
    pub fn new(ruleset: Ruleset) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(ruleset)))
    }

    /// Replaces the ruleset for every holder of this handle.
    pub fn replace(&self, ruleset: Ruleset) {
        self.0.store(Arc::new(ruleset));
    }

    /// The class of a message type under the current ruleset.
    pub fn classify(&self, msg_type: MsgType) -> OutputClass {
        self.0.load().classify(msg_type)
    }

    /// A copy of the current ruleset.
    pub fn current(&self) -> Ruleset {
        Ruleset::clone(&self.0.load())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_is_seen_by_every_holder() {
        let h = RulesetHandle::new(Ruleset::default().with(7, OutputClass::Immediate, "echo"));
        let other = h.clone();
        assert_eq!(other.classify(7), OutputClass::Immediate);
        assert_eq!(other.classify(8), OutputClass::Gated);
        h.replace(Ruleset::default().with(7, OutputClass::Gated, "now gated"));
        assert_eq!(other.classify(7), OutputClass::Gated);
    }
}
