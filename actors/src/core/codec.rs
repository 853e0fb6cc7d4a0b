//! Byte encodings: stored objects (format-versioned) and wire payloads (never panicking).

use serde::{Serialize, de::DeserializeOwned};

use super::version::Object;

/// First byte of every stored object; bump it when the layout changes and keep a reader for the old one.
pub const OBJECT_FORMAT_V1: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input was empty.
    #[error("empty input")]
    Empty,
    /// The format version byte is not one this build can read.
    #[error("unknown format version {0}")]
    UnknownFormat(u8),
    /// The body did not decode.
    #[error("malformed body: {0}")]
    Malformed(String),
}

/// Encodes a stored object: the format byte, then the MessagePack body.
pub fn encode_object(object: &Object) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(OBJECT_FORMAT_V1);
    // Serializing plain owned data into a Vec cannot fail.
    rmp_serde::encode::write(&mut out, object).expect("object encodes");
    out
}

/// Decodes what [`encode_object`] wrote.
pub fn decode_object(bytes: &[u8]) -> Result<Object, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&OBJECT_FORMAT_V1, body)) => {
            rmp_serde::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
        }
        Some((&v, _)) => Err(DecodeError::UnknownFormat(v)),
    }
}

/// Encodes a wire payload as MessagePack with field names, so fields can be added compatibly.
pub fn encode_wire<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("wire payload encodes")
}

/// Decodes a wire payload; never panics on hostile input.
pub fn decode_wire<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::version::ConflictPolicy;
    use proptest::prelude::*;

    #[test]
    fn object_round_trips_and_starts_with_format_byte() {
        let mut o = Object::default();
        o.update(
            "n1",
            1,
            None,
            Some(b"v".to_vec()),
            7,
            ConflictPolicy::default(),
        );
        let bytes = encode_object(&o);
        assert_eq!(bytes[0], OBJECT_FORMAT_V1);
        assert_eq!(decode_object(&bytes).unwrap(), o);
    }

    #[test]
    fn unknown_format_and_empty_are_errors() {
        assert_eq!(decode_object(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode_object(&[9, 1, 2]),
            Err(DecodeError::UnknownFormat(9))
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_object(&bytes);
            let _ = decode_wire::<Object>(&bytes);
        }

        #[test]
        fn any_object_round_trips(vals in prop::collection::vec(prop::option::of(prop::collection::vec(any::<u8>(), 0..64)), 1..6)) {
            let mut o = Object::default();
            let empty = crate::core::version::CausalContext::default();
            for (i, v) in vals.into_iter().enumerate() {
                o.update(if i % 2 == 0 { "a" } else { "b" }, i as u64 + 1, Some(&empty), v, i as u64, ConflictPolicy::default());
            }
            prop_assert_eq!(decode_object(&encode_object(&o)).unwrap(), o);
        }
    }
}
