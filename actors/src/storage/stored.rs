//! An object as a vnode holds it: decoded, encoded and digested once, then shared (behind an
//! `Arc`) by the memtable, the object cache and every reader, so a read clones a pointer
//! rather than the object and never hashes it again.

use std::sync::{Arc, OnceLock};

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
    /// The encoded causal context a client read of it returns, made by the first such read.
    context: OnceLock<Vec<u8>>,
}

impl Stored {
    /// Shares `object` with its `encoded` form, computing the digest once.
    pub fn new(object: Object, encoded: Vec<u8>) -> Arc<Stored> {
        let digest = object.digest();
        Arc::new(Stored {
            object,
            encoded,
            digest,
            context: OnceLock::new(),
        })
    }

    /// The encoded read context of the object: `make`'s result, computed once per object.
    pub fn read_context(&self, make: impl FnOnce(&Object) -> Vec<u8>) -> &[u8] {
        self.context.get_or_init(|| make(&self.object))
    }
}
