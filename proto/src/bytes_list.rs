//! `#[serde(with = "ckpt_proto::bytes_list")]` for a `Vec<Vec<u8>>`: each
//! buffer as bytes (one length, then a copy) rather than as a sequence of
//! `u8` values, each serialized on its own. In postcard both are the same
//! bytes on the wire — a varint count, then per buffer a varint length and
//! the buffer — so the change is invisible to peers; only the cost moved
//! (a read reply's body was serialized byte by byte).

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};

/// Serializes `buffers` as a sequence of byte strings.
///
/// # Errors
/// The serializer's.
pub fn serialize<S: Serializer>(buffers: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
    let mut seq = serializer.serialize_seq(Some(buffers.len()))?;
    for buffer in buffers {
        seq.serialize_element(serde_bytes::Bytes::new(buffer))?;
    }
    seq.end()
}

/// Deserializes a sequence of byte strings.
///
/// # Errors
/// The deserializer's.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
    struct Buffers;

    impl<'de> Visitor<'de> for Buffers {
        type Value = Vec<Vec<u8>>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence of byte strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // The count comes from the peer: reserve no more than a few
            // entries ahead of what actually arrives.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(buffer) = seq.next_element::<serde_bytes::ByteBuf>()? {
                out.push(buffer.into_vec());
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Buffers)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain(Vec<Vec<u8>>);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fast(#[serde(with = "super")] Vec<Vec<u8>>);

    #[test]
    fn the_wire_bytes_are_those_of_a_plain_vec_of_vecs() {
        for buffers in [
            vec![],
            vec![vec![]],
            vec![b"abc".to_vec(), vec![0xff; 300], vec![]],
            vec![vec![7u8; 70_000]],
        ] {
            let plain = postcard::to_allocvec(&Plain(buffers.clone())).unwrap();
            let fast = postcard::to_allocvec(&Fast(buffers.clone())).unwrap();
            assert_eq!(plain, fast);
            let back: Fast = postcard::from_bytes(&plain).unwrap();
            assert_eq!(back.0, buffers);
            let back: Plain = postcard::from_bytes(&fast).unwrap();
            assert_eq!(back.0, buffers);
        }
    }

    #[test]
    fn a_count_larger_than_the_input_fails_without_reserving_it() {
        // count u32::MAX (varint), then one 1-byte buffer and nothing more
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, b'x'];
        assert!(postcard::from_bytes::<Fast>(&bytes).is_err());
    }
}
