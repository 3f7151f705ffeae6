//! Checkpoints whose metadata changed and that a driver has not yet acted
//! on.

use std::collections::BTreeMap;
use std::sync::Arc;

use ckpt_storage::InstanceId;

use super::state::{Changes, CheckpointMeta, ClusterState};

/// The instances a state change touched that the driver has not yet told
/// its data plane about, each with the metadata it last acted on (`None`:
/// it did not know the instance).
///
/// One command can change every checkpoint at once (a failover: with three
/// nodes, every checkpoint has a replica on the dead one; a restart or an
/// installed snapshot: all of them). Acting on each costs a store read and
/// the data plane's update, about 10 µs: at 50,000 checkpoints half a
/// second in which the driver neither ticks Raft nor renews its lease. The
/// driver takes a slice of these per pass instead, in instance order.
///
/// A driver acting later on an instance is what a node does that applies
/// the control plane's log later, which every node may: the data plane
/// never counts on the state of other nodes. What it counts on from its own
/// node is kept: the front takes writes only for an epoch begun here (begun
/// after the instance is acted on), and a primary gives up on a pending
/// addition to the in-sync set only with a fresh view of the control plane
/// (the driver does not call it fresh while any instance is unsynced).
#[derive(Debug, Default)]
pub struct Unsynced(BTreeMap<InstanceId, Option<Arc<CheckpointMeta>>>);

impl Unsynced {
    /// `instance` changed; `acted_on` is the metadata the driver last acted
    /// on, kept if the instance is already waiting (the data plane goes
    /// from what it was told to the newest state in one step, as when one
    /// pass applies several commands).
    pub fn note(&mut self, instance: InstanceId, acted_on: Option<Arc<CheckpointMeta>>) {
        self.0.entry(instance).or_insert(acted_on);
    }

    /// Notes what one applied ready changed from `old` to `new` (every
    /// checkpoint of both when the whole state changed).
    pub fn note_changes(&mut self, changes: &Changes, old: &ClusterState, new: &ClusterState) {
        if changes.everything {
            for meta in old.checkpoints() {
                self.note(meta.instance, old.get_shared(meta.instance));
            }
            for meta in new.checkpoints() {
                self.note(meta.instance, None);
            }
        } else {
            for &instance in &changes.instances {
                self.note(instance, old.get_shared(instance));
            }
        }
    }

    /// Up to `max` of them, lowest instance first, each with the metadata
    /// last acted on; they are no longer waiting.
    pub fn take(&mut self, max: usize) -> Vec<(InstanceId, Option<Arc<CheckpointMeta>>)> {
        let mut taken = Vec::with_capacity(max.min(self.0.len()));
        while taken.len() < max {
            let Some(next) = self.0.pop_first() else {
                break;
            };
            taken.push(next);
        }
        taken
    }

    /// Whether `instance` waits.
    pub fn contains(&self, instance: InstanceId) -> bool {
        self.0.contains_key(&instance)
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Forgets everything (a restart: the state is read again).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use ckpt_proto::{CheckpointName, CreationAttributes, CreationFlags};

    use super::*;
    use crate::control::{Applied, ClusterState, Command};

    fn created(state: &mut ClusterState, name: &str) -> Arc<CheckpointMeta> {
        let command = Command::Create {
            name: CheckpointName::new(name).unwrap(),
            attributes: CreationAttributes {
                creation_flags: CreationFlags::WR_ALL_REPLICAS,
                checkpoint_size: 1024,
                retention_duration_ns: 0,
                max_sections: 2,
                max_section_size: 512,
                max_section_id_size: 16,
            },
            creator: 1,
        };
        match state.apply(&command) {
            Applied::Created { meta } => Arc::new(meta),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keeps_what_was_acted_on_first_and_hands_out_slices_in_order() {
        let mut state = ClusterState::new(&[1, 2, 3], 3);
        let meta = created(&mut state, "a");
        let mut unsynced = Unsynced::default();
        unsynced.note(InstanceId(3), None);
        unsynced.note(InstanceId(1), Some(meta.clone()));
        unsynced.note(InstanceId(2), None);
        // Changed again before the driver got to it: the data plane still
        // knows what it was told first.
        unsynced.note(InstanceId(1), None);
        assert_eq!(unsynced.len(), 3);
        assert!(unsynced.contains(InstanceId(2)));
        let first = unsynced.take(2);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].0, InstanceId(1));
        assert_eq!(first[0].1.as_deref(), Some(&*meta));
        assert_eq!(first[1].0, InstanceId(2));
        assert!(!unsynced.contains(InstanceId(2)));
        assert_eq!(unsynced.len(), 1);
        let rest: Vec<InstanceId> = unsynced.take(10).into_iter().map(|(i, _)| i).collect();
        assert_eq!(rest, [InstanceId(3)]);
        assert!(unsynced.is_empty());
        assert!(unsynced.take(10).is_empty());
    }
}
