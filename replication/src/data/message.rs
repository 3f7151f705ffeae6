//! What the data planes of two nodes send each other (postcard over the peer
//! connection). Entries travel as the bytes `Entry::encode` produced, with a
//! small header so that a backup can check order and fencing without
//! decoding them.

use ckpt_proto::{CkptError, CkptResult, ErrorCode};
use ckpt_storage::{Epoch, InstanceId, Seq};
use serde::{Deserialize, Serialize};

/// One shipped entry: its place in the log and its encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// Epoch the entry was ordered in.
    #[serde(with = "epoch_serde")]
    pub epoch: Epoch,
    /// Sequence number within the instance.
    #[serde(with = "seq_serde")]
    pub seq: Seq,
    /// `Entry::encode` of the entry (as bytes, not a sequence of u8: the
    /// same postcard encoding without a call per byte).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// A data-plane message between two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataMessage {
    /// Primary → backup: entries that follow the entry at `prev` (`None`: the
    /// start of the log), consecutive in seq. Sent by the active replica of
    /// `epoch`. Empty `entries` tell a caught-up backup that its log matches.
    Entries {
        #[serde(with = "instance_serde")]
        instance: InstanceId,
        #[serde(with = "epoch_serde")]
        epoch: Epoch,
        #[serde(with = "opt_point_serde")]
        prev: Option<(Epoch, Seq)>,
        entries: Vec<WireEntry>,
    },
    /// Backup → primary: the backup's log is durable up to `seq` and matches
    /// the primary's of `epoch` up to there.
    Ack {
        #[serde(with = "instance_serde")]
        instance: InstanceId,
        #[serde(with = "epoch_serde")]
        epoch: Epoch,
        #[serde(with = "seq_serde")]
        seq: Seq,
    },
    /// Backup → primary: send what follows my last entry `last` (`None`: I
    /// hold nothing of the instance). `epoch` is the epoch the backup knows.
    CatchUp {
        #[serde(with = "instance_serde")]
        instance: InstanceId,
        #[serde(with = "epoch_serde")]
        epoch: Epoch,
        #[serde(with = "opt_point_serde")]
        last: Option<(Epoch, Seq)>,
    },
    /// Primary → backup: part `index` of a snapshot of the whole instance
    /// as of its entry `last` (`bytes`: the storage crate's
    /// `encode_entries` of install entries). Part 0 starts the install,
    /// which discards whatever the backup held of the instance; `done`
    /// marks the last part. The next part is sent once the backup
    /// acknowledged this one ([`DataMessage::SnapshotAck`]).
    SnapshotPart {
        #[serde(with = "instance_serde")]
        instance: InstanceId,
        #[serde(with = "epoch_serde")]
        epoch: Epoch,
        #[serde(with = "point_serde")]
        last: (Epoch, Seq),
        /// The position named by the backup's CatchUp this snapshot
        /// answers: a backup that asked again since ignores the stream.
        #[serde(with = "opt_point_serde")]
        answers: Option<(Epoch, Seq)>,
        index: u64,
        done: bool,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Backup → primary: snapshot part `index` (not the last) is durable
    /// here; send the next.
    SnapshotAck {
        #[serde(with = "instance_serde")]
        instance: InstanceId,
        #[serde(with = "epoch_serde")]
        epoch: Epoch,
        #[serde(with = "point_serde")]
        last: (Epoch, Seq),
        index: u64,
    },
    /// Backup → sender: you sent entries of an epoch older than `epoch`, the
    /// one the control plane gave me; you are no longer the active replica.
    Fenced {
        #[serde(with = "instance_serde")]
        instance: InstanceId,
        #[serde(with = "epoch_serde")]
        epoch: Epoch,
    },
    /// Primary → backup: I do not know where your log is (you are behind and
    /// silent); answer with a CatchUp.
    Probe {
        #[serde(with = "instance_serde")]
        instance: InstanceId,
        #[serde(with = "epoch_serde")]
        epoch: Epoch,
    },
}

impl DataMessage {
    /// The instance the message is about.
    pub fn instance(&self) -> InstanceId {
        match self {
            DataMessage::Entries { instance, .. }
            | DataMessage::Ack { instance, .. }
            | DataMessage::CatchUp { instance, .. }
            | DataMessage::SnapshotPart { instance, .. }
            | DataMessage::SnapshotAck { instance, .. }
            | DataMessage::Fenced { instance, .. }
            | DataMessage::Probe { instance, .. } => *instance,
        }
    }

    /// The postcard encoding.
    ///
    /// # Errors
    /// `NoResource` if serialization fails (it cannot for these types).
    pub fn encode(&self) -> CkptResult<Vec<u8>> {
        postcard::to_stdvec(self)
            .map_err(|e| CkptError::new(ErrorCode::NoResource, format!("encode data message: {e}")))
    }

    /// Decodes a message a peer sent.
    ///
    /// # Errors
    /// `MessageError` naming the decode failure if `bytes` is not a message.
    pub fn decode(bytes: &[u8]) -> CkptResult<DataMessage> {
        postcard::from_bytes(bytes).map_err(|e| {
            CkptError::new(
                ErrorCode::MessageError,
                format!("data message of {} bytes does not decode: {e}", bytes.len()),
            )
        })
    }
}

/// serde for the storage crate's u64 newtypes, which do not derive it.
macro_rules! newtype_serde {
    ($module:ident, $type:ident) => {
        mod $module {
            use ckpt_storage::$type;
            use serde::{Deserialize, Deserializer, Serialize, Serializer};

            pub fn serialize<S: Serializer>(value: &$type, s: S) -> Result<S::Ok, S::Error> {
                value.0.serialize(s)
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$type, D::Error> {
                u64::deserialize(d).map($type)
            }
        }
    };
}

newtype_serde!(epoch_serde, Epoch);
newtype_serde!(seq_serde, Seq);
newtype_serde!(instance_serde, InstanceId);

mod point_serde {
    use ckpt_storage::{Epoch, Seq};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &(Epoch, Seq), s: S) -> Result<S::Ok, S::Error> {
        (value.0 .0, value.1 .0).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(Epoch, Seq), D::Error> {
        <(u64, u64)>::deserialize(d).map(|(e, s)| (Epoch(e), Seq(s)))
    }
}

mod opt_point_serde {
    use ckpt_storage::{Epoch, Seq};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<(Epoch, Seq)>, s: S) -> Result<S::Ok, S::Error> {
        value.map(|(e, q)| (e.0, q.0)).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(Epoch, Seq)>, D::Error> {
        <Option<(u64, u64)>>::deserialize(d).map(|p| p.map(|(e, s)| (Epoch(e), Seq(s))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let messages = vec![
            DataMessage::Entries {
                instance: InstanceId(7),
                epoch: Epoch(2),
                prev: Some((Epoch(1), Seq(9))),
                entries: vec![WireEntry {
                    epoch: Epoch(2),
                    seq: Seq(10),
                    bytes: vec![1, 2, 3],
                }],
            },
            DataMessage::Entries {
                instance: InstanceId(7),
                epoch: Epoch(2),
                prev: None,
                entries: vec![],
            },
            DataMessage::Ack {
                instance: InstanceId(7),
                epoch: Epoch(2),
                seq: Seq(u64::MAX),
            },
            DataMessage::CatchUp {
                instance: InstanceId(7),
                epoch: Epoch(3),
                last: None,
            },
            DataMessage::CatchUp {
                instance: InstanceId(7),
                epoch: Epoch(3),
                last: Some((Epoch(2), Seq(4))),
            },
            DataMessage::SnapshotPart {
                instance: InstanceId(7),
                epoch: Epoch(3),
                last: (Epoch(3), Seq(40)),
                answers: Some((Epoch(2), Seq(7))),
                index: 2,
                done: true,
                bytes: vec![9; 100],
            },
            DataMessage::SnapshotAck {
                instance: InstanceId(7),
                epoch: Epoch(3),
                last: (Epoch(3), Seq(40)),
                index: 1,
            },
            DataMessage::Fenced {
                instance: InstanceId(7),
                epoch: Epoch(5),
            },
        ];
        for message in messages {
            let bytes = message.encode().unwrap();
            assert_eq!(DataMessage::decode(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn garbage_is_a_message_error() {
        let err = DataMessage::decode(&[200, 200, 200]).unwrap_err();
        assert_eq!(err.code, ErrorCode::MessageError);
        assert!(err.detail.contains("3 bytes"), "{}", err.detail);
    }
}
