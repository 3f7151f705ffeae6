//! What nodes send each other over the peer connection, and the serde
//! mirrors of storage types that do not derive serde themselves.

use ckpt_proto::{
    CheckpointName, CkptError, CkptResult, ErrorCode, SectionCreationAttributes, SectionId,
    WriteElement,
};
use ckpt_storage::{InstanceId, Op, Outcome};
use serde::{Deserialize, Serialize};

use crate::reads::{ReadReply, ReadRequest};

/// A request a node forwards to the node that can serve it (the active
/// replica of an instance, or the Raft leader for a lookup).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// An update on the active replica.
    Write {
        instance: u64,
        op: WireOp,
        origin: Option<(u64, u64)>,
        need: WireNeed,
    },
    /// A read on the active replica.
    Read { instance: u64, request: ReadRequest },
    /// Synchronize on the active replica.
    Synchronize { instance: u64 },
    /// Answered once the active replica created the instance or began its
    /// current epoch (writes are accepted from then on).
    AwaitReady { instance: u64 },
    /// Asked of the Raft leader after a local miss: the instance `name`
    /// refers to, if any.
    Lookup { name: CheckpointName },
}

/// The successful answer to a [`ForwardRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardOk {
    Outcome(WireOutcome),
    Read(ReadReply),
    Done,
    Found(Option<u64>),
}

/// [`ckpt_replication::data::Need`] on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireNeed {
    Applied,
    LocalDurable,
    AllInSync,
}

/// [`Op`] on the wire: the instance-level updates a node forwards.
/// Creating, restoring and expiring are cluster-level and never forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOp {
    SetRetention {
        instance: u64,
        retention_duration_ns: i64,
    },
    CreateSection {
        instance: u64,
        attributes: SectionCreationAttributes,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    DeleteSection {
        instance: u64,
        section_id: SectionId,
    },
    SetExpiration {
        instance: u64,
        section_id: SectionId,
        expiration_time: i64,
    },
    Write {
        instance: u64,
        elements: Vec<WriteElement>,
    },
    Overwrite {
        instance: u64,
        section_id: SectionId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    RestoreSection {
        instance: u64,
        section_id: SectionId,
        expiration_time: i64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Barrier,
}

impl WireOp {
    /// The wire form of `op`.
    ///
    /// # Errors
    /// `BAD_OPERATION` for an operation that is never forwarded.
    pub fn from_op(op: Op) -> CkptResult<WireOp> {
        Ok(match op {
            Op::SetRetention {
                instance,
                retention_duration_ns,
            } => WireOp::SetRetention {
                instance: instance.0,
                retention_duration_ns,
            },
            Op::CreateSection {
                instance,
                attributes,
                data,
            } => WireOp::CreateSection {
                instance: instance.0,
                attributes,
                data,
            },
            Op::DeleteSection {
                instance,
                section_id,
            } => WireOp::DeleteSection {
                instance: instance.0,
                section_id,
            },
            Op::SetExpiration {
                instance,
                section_id,
                expiration_time,
            } => WireOp::SetExpiration {
                instance: instance.0,
                section_id,
                expiration_time,
            },
            Op::Write { instance, elements } => WireOp::Write {
                instance: instance.0,
                elements,
            },
            Op::Overwrite {
                instance,
                section_id,
                data,
            } => WireOp::Overwrite {
                instance: instance.0,
                section_id,
                data,
            },
            Op::RestoreSection {
                instance,
                section_id,
                expiration_time,
                data,
            } => WireOp::RestoreSection {
                instance: instance.0,
                section_id,
                expiration_time,
                data,
            },
            Op::Barrier => WireOp::Barrier,
            other => {
                return Err(CkptError::new(
                    ErrorCode::BadOperation,
                    format!("{} is not forwarded to another node", op_name(&other)),
                ))
            }
        })
    }

    /// The operation again.
    pub fn into_op(self) -> Op {
        match self {
            WireOp::SetRetention {
                instance,
                retention_duration_ns,
            } => Op::SetRetention {
                instance: InstanceId(instance),
                retention_duration_ns,
            },
            WireOp::CreateSection {
                instance,
                attributes,
                data,
            } => Op::CreateSection {
                instance: InstanceId(instance),
                attributes,
                data,
            },
            WireOp::DeleteSection {
                instance,
                section_id,
            } => Op::DeleteSection {
                instance: InstanceId(instance),
                section_id,
            },
            WireOp::SetExpiration {
                instance,
                section_id,
                expiration_time,
            } => Op::SetExpiration {
                instance: InstanceId(instance),
                section_id,
                expiration_time,
            },
            WireOp::Write { instance, elements } => Op::Write {
                instance: InstanceId(instance),
                elements,
            },
            WireOp::Overwrite {
                instance,
                section_id,
                data,
            } => Op::Overwrite {
                instance: InstanceId(instance),
                section_id,
                data,
            },
            WireOp::RestoreSection {
                instance,
                section_id,
                expiration_time,
                data,
            } => Op::RestoreSection {
                instance: InstanceId(instance),
                section_id,
                expiration_time,
                data,
            },
            WireOp::Barrier => Op::Barrier,
        }
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::CreateCheckpoint { .. } => "CreateCheckpoint",
        Op::Unlink { .. } => "Unlink",
        Op::Destroy { .. } => "Destroy",
        Op::ExpireDue => "ExpireDue",
        Op::ExpireDueIn { .. } => "ExpireDueIn",
        Op::Restore { .. } => "Restore",
        _ => "this operation",
    }
}

/// [`Outcome`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOutcome {
    Opened { instance: u64, existed: bool },
    SectionCreated { section_id: SectionId },
    Expired { count: u32 },
    Done,
}

impl From<Outcome> for WireOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Opened { instance, existed } => WireOutcome::Opened {
                instance: instance.0,
                existed,
            },
            Outcome::SectionCreated { section_id } => WireOutcome::SectionCreated { section_id },
            Outcome::Expired { count } => WireOutcome::Expired { count },
            Outcome::Done => WireOutcome::Done,
        }
    }
}

impl From<WireOutcome> for Outcome {
    fn from(outcome: WireOutcome) -> Self {
        match outcome {
            WireOutcome::Opened { instance, existed } => Outcome::Opened {
                instance: InstanceId(instance),
                existed,
            },
            WireOutcome::SectionCreated { section_id } => Outcome::SectionCreated { section_id },
            WireOutcome::Expired { count } => Outcome::Expired { count },
            WireOutcome::Done => Outcome::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_ops_survive_the_wire() {
        let ops = vec![
            Op::Write {
                instance: InstanceId(7),
                elements: vec![WriteElement {
                    section_id: SectionId::new(b"s".to_vec()),
                    offset: 3,
                    data: vec![1, 2, 3],
                }],
            },
            Op::DeleteSection {
                instance: InstanceId(9),
                section_id: SectionId::default(),
            },
            Op::Barrier,
        ];
        for op in ops {
            let wire = WireOp::from_op(op.clone()).unwrap();
            let bytes = postcard::to_stdvec(&wire).unwrap();
            let back: WireOp = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back.into_op(), op);
        }
        let refused = WireOp::from_op(Op::ExpireDue).unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadOperation);
    }
}
