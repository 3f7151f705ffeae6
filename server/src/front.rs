//! What the client-facing service needs from the cluster: the seam between
//! [`crate::service`] (handles, sessions, access checks — the same code on
//! one node and in a cluster) and the replication runtime (control plane,
//! log shipping, forwarding to the active replica).
//!
//! Without a cluster configuration the service has no [`ClusterFront`] and
//! works on its own store exactly as the single-node server always did.

use ckpt_proto::{CheckpointName, CkptResult, CreationAttributes};
use ckpt_storage::{InstanceId, Op, Outcome};
use futures::future::BoxFuture;

use crate::reads::{ReadReply, ReadRequest};

/// Who asked for a write: the client session (chosen by the client, kept
/// across reconnects) and its request number. The active replica logs it
/// with the entry, so a retried write is answered with its first outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteOrigin {
    /// The client's session id (never 0).
    pub session: u64,
    /// The request number within the session.
    pub request: u64,
}

/// When a write may be answered (DESIGN.md §4, the durability table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteNeed {
    /// Applied on the active replica (WR_ACTIVE_REPLICA_WEAK).
    Applied,
    /// Durable on the active replica (WR_ACTIVE_REPLICA).
    LocalDurable,
    /// Durable on every in-sync replica (ALL_SAFE, WR_ALL_REPLICAS).
    AllInSync,
}

/// A checkpoint as the control plane knows it (List, Stat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCheckpoint {
    /// Its name.
    pub name: CheckpointName,
    /// The instance the name refers to.
    pub instance: InstanceId,
    /// Its creation attributes (retention as last set).
    pub attributes: CreationAttributes,
    /// Nodes holding a replica.
    pub replicas: u32,
    /// Nodes other than this one with a handle open on it (the control
    /// plane knows which nodes have it open, each node its own handles).
    pub open_elsewhere: u32,
}

/// The cluster as the service sees it. Every call may forward to another
/// node; errors are the API's codes (`TRY_AGAIN` while a checkpoint has no
/// active replica or too few in-sync replicas, `NOT_EXIST`, ...).
pub trait ClusterFront: Send + Sync {
    /// This node's id.
    fn node_id(&self) -> u64;
    /// The checkpoint `name` refers to, cluster-wide (`NOT_EXIST`).
    fn lookup(&self, name: CheckpointName) -> BoxFuture<'_, CkptResult<ClusterCheckpoint>>;
    /// Creates the checkpoint (placement, instance id, epoch through the
    /// control plane; its creation entry on the active replica), or finds
    /// an identical existing one (`created` false); `EXIST` for a
    /// different one of that name.
    fn create(
        &self,
        name: CheckpointName,
        attributes: CreationAttributes,
        origin: Option<WriteOrigin>,
    ) -> BoxFuture<'_, CkptResult<(ClusterCheckpoint, bool)>>;
    /// A handle on `instance` was opened on this node.
    fn opened(&self, instance: InstanceId) -> BoxFuture<'_, CkptResult<()>>;
    /// The last handle on `instance` on this node was closed.
    fn closed(&self, instance: InstanceId) -> BoxFuture<'_, CkptResult<()>>;
    /// clCkptCheckpointDelete: the name goes now, the data once no node has
    /// it open.
    fn delete(&self, name: CheckpointName) -> BoxFuture<'_, CkptResult<()>>;
    /// clCkptActiveReplicaSet from this node.
    fn set_active(&self, instance: InstanceId) -> BoxFuture<'_, CkptResult<()>>;
    /// A write of `instance`, on its active replica, answered per `need`.
    /// `Op::SetRetention` also updates the control plane's retention.
    fn write(
        &self,
        instance: InstanceId,
        op: Op,
        origin: Option<WriteOrigin>,
        need: WriteNeed,
    ) -> BoxFuture<'_, CkptResult<Outcome>>;
    /// A read of `instance`: from the active replica, or from this node's
    /// replica when `local_ok` and it is in sync (or the checkpoint is
    /// DISTRIBUTED / ALL_OPEN_ARE_REPLICAS and this node holds a replica).
    fn read(
        &self,
        instance: InstanceId,
        request: ReadRequest,
        local_ok: bool,
    ) -> BoxFuture<'_, CkptResult<ReadReply>>;
    /// clCkptCheckpointSynchronize: every in-sync replica holds everything
    /// written before the call.
    fn synchronize(&self, instance: InstanceId) -> BoxFuture<'_, CkptResult<()>>;
    /// Every named checkpoint.
    fn checkpoints(&self) -> Vec<ClusterCheckpoint>;
    /// Whether this node is the active replica of `instance` now.
    fn is_active_here(&self, instance: InstanceId) -> bool;
}

impl ClusterFront for crate::cluster::Cluster {
    fn node_id(&self) -> u64 {
        self.me()
    }

    fn lookup(&self, name: CheckpointName) -> BoxFuture<'_, CkptResult<ClusterCheckpoint>> {
        Box::pin(async move {
            let instance = crate::cluster::Cluster::lookup(self, &name).await?;
            self.checkpoint(instance)
        })
    }

    fn create(
        &self,
        name: CheckpointName,
        attributes: CreationAttributes,
        origin: Option<WriteOrigin>,
    ) -> BoxFuture<'_, CkptResult<(ClusterCheckpoint, bool)>> {
        Box::pin(async move {
            let (instance, created) =
                crate::cluster::Cluster::create(self, name, attributes, origin).await?;
            Ok((self.checkpoint(instance)?, created))
        })
    }

    fn opened(&self, instance: InstanceId) -> BoxFuture<'_, CkptResult<()>> {
        Box::pin(async move {
            crate::cluster::Cluster::opened(self, instance).await?;
            // DISTRIBUTED / ALL_OPEN_ARE_REPLICAS: opening adds a replica
            // here, which its openers read and subscribe to; it must hold
            // the checkpoint before the open returns.
            let per_opener = self
                .state()
                .get(instance)
                // (A COLLOCATED one without an active replica has no data
                // anywhere yet: nothing to wait for.)
                .is_some_and(|meta| meta.replica_per_opener() && meta.active.is_some());
            if per_opener {
                self.await_local_replica(instance).await?;
            }
            Ok(())
        })
    }

    fn closed(&self, instance: InstanceId) -> BoxFuture<'_, CkptResult<()>> {
        Box::pin(async move {
            crate::cluster::Cluster::closed(self, instance).await?;
            // Retention 0 (or an unlinked checkpoint) deletes at the last
            // close anywhere: as on a single node, the close returns once
            // the name is gone, not when the leader gets round to it.
            let goes_now = |state: &ckpt_replication::ClusterState| {
                state.get(instance).is_some_and(|meta| {
                    meta.open_on.is_empty() && (meta.unlinked || meta.retention_duration_ns == 0)
                })
            };
            if !goes_now(&self.state()) {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                // Destroyed, or opened again meanwhile (then it stays).
                if self
                    .state()
                    .get(instance)
                    .is_none_or(|meta| !meta.open_on.is_empty())
                {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Ok(())
        })
    }

    fn delete(&self, name: CheckpointName) -> BoxFuture<'_, CkptResult<()>> {
        Box::pin(crate::cluster::Cluster::delete(self, name))
    }

    fn set_active(&self, instance: InstanceId) -> BoxFuture<'_, CkptResult<()>> {
        Box::pin(crate::cluster::Cluster::set_active(self, instance))
    }

    fn write(
        &self,
        instance: InstanceId,
        op: Op,
        origin: Option<WriteOrigin>,
        need: WriteNeed,
    ) -> BoxFuture<'_, CkptResult<Outcome>> {
        Box::pin(async move {
            if let Op::SetRetention {
                retention_duration_ns,
                ..
            } = &op
            {
                // The control plane runs retention: it must know the new
                // duration as well as the replicas.
                self.set_retention(instance, *retention_duration_ns).await?;
            }
            let origin = origin.map(|o| ckpt_storage::Origin {
                session: o.session,
                request: o.request,
            });
            let need = match need {
                WriteNeed::Applied => ckpt_replication::data::Need::Applied,
                WriteNeed::LocalDurable => ckpt_replication::data::Need::LocalDurable,
                WriteNeed::AllInSync => ckpt_replication::data::Need::AllInSync,
            };
            crate::cluster::Cluster::write(self, instance, op, origin, need).await
        })
    }

    fn read(
        &self,
        instance: InstanceId,
        request: ReadRequest,
        local_ok: bool,
    ) -> BoxFuture<'_, CkptResult<ReadReply>> {
        Box::pin(crate::cluster::Cluster::read(
            self, instance, request, local_ok,
        ))
    }

    fn synchronize(&self, instance: InstanceId) -> BoxFuture<'_, CkptResult<()>> {
        Box::pin(crate::cluster::Cluster::synchronize(self, instance))
    }

    fn checkpoints(&self) -> Vec<ClusterCheckpoint> {
        crate::cluster::Cluster::checkpoints(self)
            .into_iter()
            .filter(|meta| !meta.unlinked)
            .map(|meta| view(&meta, self.me()))
            .collect()
    }

    fn is_active_here(&self, instance: InstanceId) -> bool {
        let me = self.me();
        self.state()
            .get(instance)
            .is_some_and(|meta| meta.active == Some(me))
    }
}

impl crate::cluster::Cluster {
    /// The control plane's view of `instance` (`NOT_EXIST` once destroyed).
    fn checkpoint(&self, instance: InstanceId) -> CkptResult<ClusterCheckpoint> {
        self.state()
            .get(instance)
            .map(|m| view(m, self.me()))
            .ok_or_else(|| {
                ckpt_proto::CkptError::new(
                    ckpt_proto::ErrorCode::NotExist,
                    format!("checkpoint instance {} does not exist", instance.0),
                )
            })
    }
}

fn view(meta: &ckpt_replication::CheckpointMeta, me: u64) -> ClusterCheckpoint {
    ClusterCheckpoint {
        name: meta.name.clone(),
        instance: meta.instance,
        attributes: meta.attributes.clone(),
        replicas: u32::try_from(meta.replicas.len()).unwrap_or(u32::MAX),
        open_elsewhere: u32::try_from(meta.open_on.iter().filter(|n| **n != me).count())
            .unwrap_or(u32::MAX),
    }
}
