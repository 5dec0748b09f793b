//! The controller's embedded store (redb): moves (their whole machine state, written before
//! every action) and where each instance lives. Values are JSON so the file stays readable
//! across versions of the machine.

use crate::machine::MoveMachine;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;

const MOVES: TableDefinition<u64, &[u8]> = TableDefinition::new("moves");
const PLACEMENT: TableDefinition<&str, &str> = TableDefinition::new("placement");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The controller's store.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(err)?;
        let w = db.begin_write().map_err(err)?;
        {
            w.open_table(MOVES).map_err(err)?;
            w.open_table(PLACEMENT).map_err(err)?;
        }
        w.commit().map_err(err)?;
        Ok(Self { db })
    }

    /// Writes a move's state (durable when this returns).
    pub fn put_move(&self, m: &MoveMachine) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(m).map_err(err)?;
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut t = w.open_table(MOVES).map_err(err)?;
            t.insert(m.spec.id, bytes.as_slice()).map_err(err)?;
        }
        w.commit().map_err(err)
    }

    /// Every move, oldest first.
    pub fn moves(&self) -> Result<Vec<MoveMachine>, StoreError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(MOVES).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_slice(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// One move.
    pub fn get_move(&self, id: u64) -> Result<Option<MoveMachine>, StoreError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(MOVES).map_err(err)?;
        t.get(id)
            .map_err(err)?
            .map(|v| serde_json::from_slice(v.value()).map_err(err))
            .transpose()
    }

    /// The next free move id.
    pub fn next_move_id(&self) -> Result<u64, StoreError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(MOVES).map_err(err)?;
        let last = t.last().map_err(err)?.map(|(k, _)| k.value());
        Ok(last.map_or(1, |k| k + 1))
    }

    /// The node an instance lives on, if recorded.
    pub fn placement(&self, instance: &str) -> Result<Option<String>, StoreError> {
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(PLACEMENT).map_err(err)?;
        Ok(t.get(instance).map_err(err)?.map(|v| v.value().to_owned()))
    }

    /// Records where an instance lives.
    pub fn set_placement(&self, instance: &str, node: &str) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(err)?;
        {
            let mut t = w.open_table(PLACEMENT).map_err(err)?;
            t.insert(instance, node).map_err(err)?;
        }
        w.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{MoveSpec, Phase};

    #[test]
    fn moves_and_placements_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("handoff-store-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let spec = MoveSpec {
            id: 7,
            instance: "mme-1".into(),
            function: "vmme".into(),
            source: "127.0.0.1:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
            steer: "127.0.0.1:3".parse().unwrap(),
            order: handoff_state::CopyOrder::HotFirst,
            plan: handoff_state::CopyPlan::default(),
            abort_safe: false,
            lead_ms: 0,
            origin: "controller".into(),
        };
        {
            let s = Store::open(&dir).unwrap();
            assert_eq!(s.next_move_id().unwrap(), 1);
            let mut m = MoveMachine::new(spec, 0).unwrap();
            m.phase = Phase::Copy;
            m.start_action();
            s.put_move(&m).unwrap();
            s.set_placement("mme-1", "node-b").unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let moves = s.moves().unwrap();
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].phase, Phase::Copy);
        assert_eq!(s.get_move(7).unwrap().unwrap().phase, Phase::Copy);
        assert!(s.get_move(8).unwrap().is_none());
        assert!(moves[0].in_flight);
        assert_eq!(s.next_move_id().unwrap(), 8);
        assert_eq!(s.placement("mme-1").unwrap().as_deref(), Some("node-b"));
        assert_eq!(s.placement("mme-2").unwrap(), None);
        let _ = std::fs::remove_file(&dir);
    }
}
