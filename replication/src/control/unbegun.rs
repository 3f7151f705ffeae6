//! Which checkpoints a node still has to begin as their active replica.

use std::collections::{BTreeMap, BTreeSet};

use ckpt_storage::{Epoch, InstanceId};

use crate::NodeId;

use super::state::ClusterState;

/// The instances the control plane names this node the active replica of,
/// in an epoch the node has not begun serving: what a driver's tick retries
/// (a begin put off until the node's restart is applied, or one that
/// failed). Kept up to date from the instances each state change touched
/// and from each epoch begun, so the tick does not scan every checkpoint.
#[derive(Debug, Default)]
pub struct Unbegun(BTreeSet<InstanceId>);

impl Unbegun {
    /// `instance` changed in `state`, or the epoch `began` holds for it
    /// did: whether it is still to begin.
    pub fn note(
        &mut self,
        me: NodeId,
        instance: InstanceId,
        state: &ClusterState,
        began: &BTreeMap<InstanceId, Epoch>,
    ) {
        let due = state
            .get(instance)
            .is_some_and(|m| m.active == Some(me) && began.get(&instance) != Some(&m.epoch));
        if due {
            self.0.insert(instance);
        } else {
            self.0.remove(&instance);
        }
    }

    /// The instances still to begin, by id.
    pub fn iter(&self) -> impl Iterator<Item = InstanceId> + '_ {
        self.0.iter().copied()
    }

    /// Forgets everything (a restart: the state is read again).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}
