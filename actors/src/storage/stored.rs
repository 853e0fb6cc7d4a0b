//! An object as a vnode holds it: decoded, encoded and digested once, then shared (behind an
//! `Arc`) by the memtable, the object cache and every reader, so a read clones a pointer
//! rather than the object and never hashes it again.

use std::sync::Arc;

use crate::core::version::Object;

/// A key's current object with its encoding and digest; immutable once built.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    /// The decoded object.
    pub object: Object,
    /// Its encoding, as the file and the log hold it and replicas send it.
    pub encoded: Vec<u8>,
    /// Its digest (`Object::digest`), as merkle trees and digest reads compare it.
    pub digest: u64,
}

impl Stored {
    /// Shares `object` with its `encoded` form, computing the digest once.
    pub fn new(object: Object, encoded: Vec<u8>) -> Arc<Stored> {
        let digest = object.digest();
        Arc::new(Stored {
            object,
            encoded,
            digest,
        })
    }
}
