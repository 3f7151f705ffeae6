//! The checkpoint vocabulary shared by every crate: names, section ids,
//! flags with the API reference's numeric values, attributes, descriptors.
//! Validation that depends only on a value (not on stored state) lives here,
//! so the server, the client and the storage engine reject the same inputs
//! with the same codes.

use serde::{Deserialize, Serialize};

use crate::error::{CkptError, CkptResult, ErrorCode};

/// `CL_TIME_END`: a time that never comes (retention forever, a section
/// that never expires). `ClTimeT` is a signed 64-bit count of nanoseconds.
pub const TIME_END: i64 = i64::MAX;

/// Longest checkpoint name in bytes (`ClNameT` holds 256).
pub const NAME_BYTES_MAX: usize = 256;

/// Upper bound on `maxSectionIdSize`, whatever the attributes ask for.
pub const SECTION_ID_BYTES_MAX: u64 = 4096;

/// Upper bound on `maxSectionSize` (1 TiB), and so on the end (offset +
/// size) of any write. Storage keeps section data in 64 KiB chunks indexed
/// by a u32, which would wrap at 2^48; 2^40 leaves a factor of 256 of
/// margin, and a bigger section is not something one checkpoint should hold.
pub const SECTION_BYTES_MAX: u64 = 1 << 40;

/// Upper bound on `checkpointSize` (16 TiB): every sum of section sizes
/// fits a u64 many times over.
pub const CHECKPOINT_BYTES_MAX: u64 = 1 << 44;

/// Upper bound on `maxSections` (1,048,576): a checkpoint's section map is
/// held in memory while the checkpoint is in use, and iterated whole by
/// status, iteration and delete.
pub const SECTIONS_MAX: u32 = 1 << 20;

/// Upper bound on the data of one update (all elements of one write, or one
/// create/overwrite). Bigger sections are built with several writes.
pub const UPDATE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Upper bound on the number of elements in one write or read.
pub const ELEMENTS_MAX: usize = 4096;

/// A checkpoint's name: 1..=256 arbitrary bytes (`ClNameT`).
///
/// [`CheckpointName::new`] checks the bounds. Decoding from the wire does
/// not, so that a peer's bad name gets the proper code
/// (`INVALID_PARAMETER`, `NAME_TOO_LONG`) instead of a decoding error:
/// the server checks every decoded request with `Request::validate`
/// before serving it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointName(#[serde(with = "serde_bytes")] Vec<u8>);

impl CheckpointName {
    /// # Errors
    /// `INVALID_PARAMETER` when empty, `NAME_TOO_LONG` when over 256 bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> CkptResult<Self> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(CkptError::new(
                ErrorCode::InvalidParameter,
                "checkpoint name is empty",
            ));
        }
        if bytes.len() > NAME_BYTES_MAX {
            return Err(CkptError::new(
                ErrorCode::NameTooLong,
                format!(
                    "checkpoint name is {} bytes, at most {NAME_BYTES_MAX}",
                    bytes.len()
                ),
            ));
        }
        Ok(CheckpointName(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Checks the bounds again (for names decoded from a peer).
    ///
    /// # Errors
    /// As [`CheckpointName::new`].
    pub fn validate(&self) -> CkptResult<()> {
        CheckpointName::new(self.0.clone()).map(|_| ())
    }
}

impl std::fmt::Display for CheckpointName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

/// A section identifier (`ClCkptSectionIdT`). The empty id is
/// `CL_CKPT_DEFAULT_SECTION_ID` (and, in a creation request,
/// `CL_CKPT_GENERATED_SECTION_ID`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SectionId(#[serde(with = "serde_bytes")] Vec<u8>);

impl SectionId {
    /// The default section's id (empty).
    pub const DEFAULT: SectionId = SectionId(Vec::new());

    /// A section id from bytes; the empty id is the default section.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SectionId(bytes.into())
    }

    /// Whether this is the default section's id.
    pub fn is_default(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for SectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return write!(f, "<default>");
        }
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

macro_rules! flag_set {
    ($(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $flag:ident = $value:literal, )* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct $name(pub u32);

        impl $name {
            $( $(#[$fdoc])* pub const $flag: $name = $name($value); )*
            /// Every flag this type knows.
            pub const KNOWN: u32 = 0 $( | $value )*;

            /// Whether every bit of `other` is set.
            pub fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }

            /// Bits that no known flag uses.
            pub fn unknown_bits(self) -> u32 {
                self.0 & !Self::KNOWN
            }
        }

        impl std::ops::BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name {
                $name(self.0 | rhs.0)
            }
        }
    };
}

flag_set! {
    /// `ClCkptCreationFlagsT`.
    CreationFlags {
        /// `CL_CKPT_WR_ALL_REPLICAS`: a write returns when every replica has it.
        WR_ALL_REPLICAS = 0x1,
        /// `CL_CKPT_WR_ACTIVE_REPLICA`: a write returns when the active replica has it.
        WR_ACTIVE_REPLICA = 0x2,
        /// `CL_CKPT_WR_ACTIVE_REPLICA_WEAK`: like ACTIVE_REPLICA, durable within one group commit.
        WR_ACTIVE_REPLICA_WEAK = 0x4,
        /// `CL_CKPT_CHECKPOINT_COLLOCATED`.
        CHECKPOINT_COLLOCATED = 0x8,
        /// `CL_CKPT_DISTRIBUTED`.
        DISTRIBUTED = 0x10,
        /// `CL_CKPT_WR_ALL_SAFE`.
        WR_ALL_SAFE = 0x20,
        /// `CL_CKPT_ALL_OPEN_ARE_REPLICAS`.
        ALL_OPEN_ARE_REPLICAS = 0x40,
        /// `CL_CKPT_PEER_TO_PEER_REPLICA`.
        PEER_TO_PEER_REPLICA = 0x80,
        /// `CL_CKPT_PEER_TO_PEER_CACHE_DISABLE`.
        PEER_TO_PEER_CACHE_DISABLE = 0x100,
    }
}

flag_set! {
    /// `ClCkptOpenFlagsT`.
    OpenFlags {
        /// `CL_CKPT_CHECKPOINT_READ`.
        READ = 0x1,
        /// `CL_CKPT_CHECKPOINT_WRITE`.
        WRITE = 0x2,
        /// `CL_CKPT_CHECKPOINT_CREATE`.
        CREATE = 0x4,
    }
}

/// How a checkpoint's writes are acknowledged (exactly one per checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateMode {
    /// `CL_CKPT_WR_ALL_REPLICAS`.
    AllReplicas,
    /// `CL_CKPT_WR_ACTIVE_REPLICA`.
    ActiveReplica,
    /// `CL_CKPT_WR_ACTIVE_REPLICA_WEAK`.
    ActiveReplicaWeak,
}

impl CreationFlags {
    /// The one update mode these flags name.
    ///
    /// # Errors
    /// `BAD_FLAG` for unknown bits; `INVALID_PARAMETER` when none or more
    /// than one of the three update modes is set.
    pub fn update_mode(self) -> CkptResult<UpdateMode> {
        if self.unknown_bits() != 0 {
            return Err(CkptError::new(
                ErrorCode::BadFlag,
                format!("unknown creation flags 0x{:x}", self.unknown_bits()),
            ));
        }
        let modes = [
            (CreationFlags::WR_ALL_REPLICAS, UpdateMode::AllReplicas),
            (CreationFlags::WR_ACTIVE_REPLICA, UpdateMode::ActiveReplica),
            (
                CreationFlags::WR_ACTIVE_REPLICA_WEAK,
                UpdateMode::ActiveReplicaWeak,
            ),
        ];
        let mut chosen = modes.iter().filter(|(flag, _)| self.contains(*flag));
        match (chosen.next(), chosen.next()) {
            (Some((_, mode)), None) => Ok(*mode),
            (None, _) => Err(CkptError::new(
                ErrorCode::InvalidParameter,
                "creation flags name no update mode (WR_ALL_REPLICAS, WR_ACTIVE_REPLICA or WR_ACTIVE_REPLICA_WEAK)",
            )),
            (Some(_), Some(_)) => Err(CkptError::new(
                ErrorCode::InvalidParameter,
                format!("creation flags 0x{:x} name more than one update mode", self.0),
            )),
        }
    }
}

impl OpenFlags {
    /// # Errors
    /// `BAD_FLAG` for any bit other than READ, WRITE, CREATE.
    pub fn validate(self) -> CkptResult<()> {
        if self.unknown_bits() != 0 {
            return Err(CkptError::new(
                ErrorCode::BadFlag,
                format!("unknown open flags 0x{:x}", self.unknown_bits()),
            ));
        }
        Ok(())
    }
}

/// `ClCkptCheckpointCreationAttributesT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CreationAttributes {
    /// Update mode and placement flags.
    pub creation_flags: CreationFlags,
    /// Upper bound on the sum of all section sizes, in bytes.
    pub checkpoint_size: u64,
    /// How long an unopened checkpoint is kept, in ns; [`TIME_END`] = forever.
    pub retention_duration_ns: i64,
    /// Most sections the checkpoint may hold (1 = only the default section).
    pub max_sections: u32,
    /// Largest size of one section, in bytes.
    pub max_section_size: u64,
    /// Longest section id, in bytes.
    pub max_section_id_size: u64,
}

impl CreationAttributes {
    /// Checks the attributes on their own (DESIGN.md §2, "create").
    ///
    /// # Errors
    /// `BAD_FLAG` for unknown creation flags; `INVALID_PARAMETER` for no or
    /// several update modes, zero sections, a negative retention, maxSections
    /// over [`SECTIONS_MAX`], maxSectionSize over [`SECTION_BYTES_MAX`],
    /// checkpointSize over [`CHECKPOINT_BYTES_MAX`], an id size over
    /// [`SECTION_ID_BYTES_MAX`] or a checkpointSize larger than
    /// maxSections × maxSectionSize.
    pub fn validate(&self) -> CkptResult<()> {
        self.creation_flags.update_mode()?;
        let invalid = |detail: String| Err(CkptError::new(ErrorCode::InvalidParameter, detail));
        if self.max_sections == 0 {
            return invalid("maxSections is 0".into());
        }
        if self.retention_duration_ns < 0 {
            return invalid(format!(
                "retentionDuration {} is negative",
                self.retention_duration_ns
            ));
        }
        if self.max_sections > SECTIONS_MAX {
            return invalid(format!(
                "maxSections {} exceeds {SECTIONS_MAX}",
                self.max_sections
            ));
        }
        if self.max_section_size > SECTION_BYTES_MAX {
            return invalid(format!(
                "maxSectionSize {} exceeds {SECTION_BYTES_MAX} (1 TiB)",
                self.max_section_size
            ));
        }
        if self.checkpoint_size > CHECKPOINT_BYTES_MAX {
            return invalid(format!(
                "checkpointSize {} exceeds {CHECKPOINT_BYTES_MAX} (16 TiB)",
                self.checkpoint_size
            ));
        }
        if self.max_section_id_size > SECTION_ID_BYTES_MAX {
            return invalid(format!(
                "maxSectionIdSize {} exceeds {SECTION_ID_BYTES_MAX}",
                self.max_section_id_size
            ));
        }
        if self.max_sections > 1 && self.max_section_id_size == 0 {
            return invalid("maxSectionIdSize is 0 but maxSections > 1".into());
        }
        let capacity = u128::from(self.max_sections) * u128::from(self.max_section_size);
        if u128::from(self.checkpoint_size) > capacity {
            return invalid(format!(
                "checkpointSize {} exceeds maxSections {} x maxSectionSize {}",
                self.checkpoint_size, self.max_sections, self.max_section_size
            ));
        }
        Ok(())
    }

    /// Whether `other` differs in anything but the retention duration (the
    /// re-open rule: identical attributes open, different ones are
    /// ALREADY_EXIST).
    pub fn same_except_retention(&self, other: &CreationAttributes) -> bool {
        CreationAttributes {
            retention_duration_ns: 0,
            ..self.clone()
        } == CreationAttributes {
            retention_duration_ns: 0,
            ..other.clone()
        }
    }

    /// What differs from `asked`, retention aside (it may be changed
    /// later), as `name value (asked value)` in the API's attribute names:
    /// what an "exists with different attributes" error names.
    pub fn differences(&self, asked: &CreationAttributes) -> Vec<String> {
        let mut out = Vec::new();
        if self.creation_flags != asked.creation_flags {
            out.push(format!(
                "creationFlags {:#x} (asked {:#x})",
                self.creation_flags.0, asked.creation_flags.0
            ));
        }
        let mut number = |name: &str, have: u64, want: u64| {
            if have != want {
                out.push(format!("{name} {have} (asked {want})"));
            }
        };
        number(
            "checkpointSize",
            self.checkpoint_size,
            asked.checkpoint_size,
        );
        number(
            "maxSections",
            u64::from(self.max_sections),
            u64::from(asked.max_sections),
        );
        number(
            "maxSectionSize",
            self.max_section_size,
            asked.max_section_size,
        );
        number(
            "maxSectionIdSize",
            self.max_section_id_size,
            asked.max_section_id_size,
        );
        out
    }

    /// The detail of the `ALREADY_EXIST` error for reopening checkpoint
    /// `name`, which has these attributes, with `asked`: names what differs.
    pub fn mismatch(&self, name: &CheckpointName, asked: &CreationAttributes) -> String {
        format!(
            "checkpoint {name} exists with different attributes: {}",
            self.differences(asked).join(", ")
        )
    }

    /// Whether the checkpoint has exactly one, default, section.
    pub fn has_default_section(&self) -> bool {
        self.max_sections == 1
    }

    /// Bytes of [`CreationAttributes::encode_le`].
    pub const ENCODED_BYTES: usize = 40;

    /// The fixed-width little-endian form used by the WAL, the RocksDB
    /// metadata and dump files: creation flags u32, checkpointSize u64,
    /// retention i64, maxSections u32, maxSectionSize u64, maxSectionIdSize u64.
    pub fn encode_le(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.creation_flags.0.to_le_bytes());
        out.extend_from_slice(&self.checkpoint_size.to_le_bytes());
        out.extend_from_slice(&self.retention_duration_ns.to_le_bytes());
        out.extend_from_slice(&self.max_sections.to_le_bytes());
        out.extend_from_slice(&self.max_section_size.to_le_bytes());
        out.extend_from_slice(&self.max_section_id_size.to_le_bytes());
    }
}

/// `ClCkptSectionsChosenT`: which sections an iteration visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum SectionsChosen {
    /// Sections that never expire.
    Forever = 1,
    /// Sections expiring at or before the given time.
    LeqExpirationTime = 2,
    /// Sections expiring at or after the given time.
    GeqExpirationTime = 3,
    /// Corrupted sections.
    Corrupted = 4,
    /// Every section.
    Any = 5,
}

impl SectionsChosen {
    /// From the C value.
    ///
    /// # Errors
    /// `INVALID_PARAMETER` for a value outside 1..=5.
    pub fn from_u32(value: u32) -> CkptResult<Self> {
        Ok(match value {
            1 => SectionsChosen::Forever,
            2 => SectionsChosen::LeqExpirationTime,
            3 => SectionsChosen::GeqExpirationTime,
            4 => SectionsChosen::Corrupted,
            5 => SectionsChosen::Any,
            other => {
                return Err(CkptError::new(
                    ErrorCode::InvalidParameter,
                    format!("sectionsChosen {other} is not 1..=5"),
                ))
            }
        })
    }

    /// Whether a section with this expiration and state is chosen, given the
    /// iteration's reference time.
    pub fn matches(self, expiration_time: i64, state: SectionState, reference_time: i64) -> bool {
        match self {
            SectionsChosen::Forever => expiration_time == TIME_END,
            SectionsChosen::LeqExpirationTime => expiration_time <= reference_time,
            SectionsChosen::GeqExpirationTime => expiration_time >= reference_time,
            SectionsChosen::Corrupted => state == SectionState::Corrupted,
            SectionsChosen::Any => true,
        }
    }
}

/// `ClCkptSectionStateT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum SectionState {
    /// The section's data is complete.
    Valid = 1,
    /// The section's data may be incomplete (never produced by ckpt's atomic writes,
    /// kept for API compatibility).
    Corrupted = 2,
}

/// `ClCkptSectionDescriptorT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionDescriptor {
    /// The section's id.
    pub section_id: SectionId,
    /// Absolute expiration time in ns since the epoch, or [`TIME_END`].
    pub expiration_time: i64,
    /// Current size in bytes.
    pub section_size: u64,
    /// Valid or corrupted.
    pub state: SectionState,
    /// When the section last changed, ns since the epoch.
    pub last_update: i64,
}

/// `ClCkptCheckpointDescriptorT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStatus {
    /// The attributes the checkpoint was created with (retention as last set).
    pub attributes: CreationAttributes,
    /// How many sections exist now.
    pub number_of_sections: u32,
    /// Sum of all section sizes in bytes.
    pub memory_used: u64,
}

/// `ClCkptSectionCreationAttributesT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionCreationAttributes {
    /// The id to create, or `None` for `CL_CKPT_GENERATED_SECTION_ID`.
    pub section_id: Option<SectionId>,
    /// Absolute expiration time in ns, or [`TIME_END`].
    pub expiration_time: i64,
}

/// One element of a write (`ClCkptIOVectorElementT` used for writing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteElement {
    /// The section to write.
    pub section_id: SectionId,
    /// Byte offset in the section.
    pub offset: u64,
    /// The bytes to write.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// One element of a read (`ClCkptIOVectorElementT` used for reading).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadElement {
    /// The section to read.
    pub section_id: SectionId,
    /// Byte offset in the section.
    pub offset: u64,
    /// How many bytes to read; `None` means "to the end of the section"
    /// (the reference's missing buffer).
    pub size: Option<u64>,
}

/// Current wall-clock time in ns since the Unix epoch.
pub fn now_ns() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(TIME_END)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> CreationAttributes {
        CreationAttributes {
            creation_flags: CreationFlags::WR_ACTIVE_REPLICA,
            checkpoint_size: 1000,
            retention_duration_ns: 0,
            max_sections: 10,
            max_section_size: 100,
            max_section_id_size: 16,
        }
    }

    #[test]
    fn names_are_bounded() {
        assert_eq!(
            CheckpointName::new("").unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        assert!(CheckpointName::new(vec![b'a'; 256]).is_ok());
        assert_eq!(
            CheckpointName::new(vec![b'a'; 257]).unwrap_err().code,
            ErrorCode::NameTooLong
        );
    }

    #[test]
    fn decoded_names_can_be_revalidated() {
        let long = postcard::to_stdvec(&vec![b'a'; 257]).unwrap();
        let decoded: CheckpointName = postcard::from_bytes(&long).unwrap();
        assert_eq!(decoded.validate().unwrap_err().code, ErrorCode::NameTooLong);
        let empty: CheckpointName = postcard::from_bytes(&[0]).unwrap();
        assert_eq!(
            empty.validate().unwrap_err().code,
            ErrorCode::InvalidParameter
        );
        assert!(CheckpointName::new("ok").unwrap().validate().is_ok());
    }

    #[test]
    fn exactly_one_update_mode() {
        assert!(attrs().validate().is_ok());
        let mut a = attrs();
        a.creation_flags = CreationFlags::WR_ALL_REPLICAS | CreationFlags::WR_ACTIVE_REPLICA;
        assert_eq!(a.validate().unwrap_err().code, ErrorCode::InvalidParameter);
        a.creation_flags = CreationFlags::DISTRIBUTED;
        assert_eq!(a.validate().unwrap_err().code, ErrorCode::InvalidParameter);
        a.creation_flags = CreationFlags(0x2 | 0x1000);
        assert_eq!(a.validate().unwrap_err().code, ErrorCode::BadFlag);
    }

    #[test]
    fn checkpoint_size_bounded_by_sections() {
        let mut a = attrs();
        a.checkpoint_size = 1001;
        assert_eq!(a.validate().unwrap_err().code, ErrorCode::InvalidParameter);
        a.checkpoint_size = 1000;
        assert!(a.validate().is_ok());
    }

    #[test]
    fn every_size_attribute_has_an_upper_bound() {
        let mut a = attrs();
        a.max_sections = SECTIONS_MAX;
        a.max_section_size = SECTION_BYTES_MAX;
        a.checkpoint_size = CHECKPOINT_BYTES_MAX;
        assert!(a.validate().is_ok(), "the limits themselves are allowed");
        for change in [
            (|a: &mut CreationAttributes| a.max_sections = SECTIONS_MAX + 1)
                as fn(&mut CreationAttributes),
            |a| a.max_section_size = SECTION_BYTES_MAX + 1,
            |a| a.checkpoint_size = CHECKPOINT_BYTES_MAX + 1,
            |a| {
                a.max_section_size = u64::MAX;
                a.checkpoint_size = u64::MAX;
                a.max_sections = u32::MAX;
            },
        ] {
            let mut over = a.clone();
            change(&mut over);
            assert_eq!(
                over.validate().unwrap_err().code,
                ErrorCode::InvalidParameter,
                "{over:?}"
            );
        }
    }

    #[test]
    fn open_flags_other_than_rwc_are_bad() {
        assert!((OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE)
            .validate()
            .is_ok());
        assert_eq!(
            OpenFlags(0x8).validate().unwrap_err().code,
            ErrorCode::BadFlag
        );
    }

    #[test]
    fn reopen_compares_all_but_retention() {
        let a = attrs();
        let mut b = attrs();
        b.retention_duration_ns = 5;
        assert!(a.same_except_retention(&b));
        b.max_sections = 11;
        assert!(!a.same_except_retention(&b));
    }

    #[test]
    fn sections_chosen_filters() {
        use SectionState::*;
        assert!(SectionsChosen::Forever.matches(TIME_END, Valid, 0));
        assert!(!SectionsChosen::Forever.matches(5, Valid, 0));
        assert!(SectionsChosen::LeqExpirationTime.matches(5, Valid, 5));
        assert!(!SectionsChosen::LeqExpirationTime.matches(6, Valid, 5));
        assert!(SectionsChosen::GeqExpirationTime.matches(6, Valid, 5));
        assert!(SectionsChosen::Corrupted.matches(6, Corrupted, 5));
        assert!(!SectionsChosen::Corrupted.matches(6, Valid, 5));
        assert!(SectionsChosen::Any.matches(6, Valid, 5));
        assert!(SectionsChosen::from_u32(0).is_err());
    }

    #[test]
    fn differences_name_each_attribute_but_retention() {
        let a = attrs();
        assert!(a.differences(&a).is_empty());
        let b = CreationAttributes {
            retention_duration_ns: 5,
            ..a.clone()
        };
        assert!(a.differences(&b).is_empty(), "retention may differ");
        let c = CreationAttributes {
            creation_flags: CreationFlags::WR_ALL_REPLICAS,
            max_sections: 11,
            ..a.clone()
        };
        assert_eq!(
            a.differences(&c),
            vec![
                "creationFlags 0x2 (asked 0x1)".to_string(),
                "maxSections 10 (asked 11)".to_string()
            ]
        );
    }
}
