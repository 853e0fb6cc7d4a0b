//! Size limits on keys and pairs, checked before anything is stored.

use serde::{Deserialize, Serialize};

use crate::protocol::KvError;

/// The size limits a node enforces on every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest accepted key, in bytes.
    pub max_key_bytes: usize,
    /// Key plus value must stay strictly below this many bytes.
    pub max_pair_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_pair_bytes: 10240,
        }
    }
}

impl Limits {
    /// Checks a key on its own (reads and deletes).
    pub fn check_key(&self, key: &[u8]) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.max_key_bytes {
            return Err(KvError::KeyTooLarge {
                size: key.len(),
                limit: self.max_key_bytes,
            });
        }
        Ok(())
    }

    /// Checks a key and its value together (writes).
    pub fn check_pair(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.check_key(key)?;
        let size = key.len() + value.len();
        if size >= self.max_pair_bytes {
            return Err(KvError::PairTooLarge {
                size,
                limit: self.max_pair_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        let l = Limits::default();
        assert_eq!(l.check_key(b""), Err(KvError::EmptyKey));
        assert!(l.check_key(&[0; 1024]).is_ok());
        assert_eq!(
            l.check_key(&[0; 1025]),
            Err(KvError::KeyTooLarge {
                size: 1025,
                limit: 1024
            })
        );
        assert!(l.check_pair(b"k", &[0; 10238]).is_ok());
        assert_eq!(
            l.check_pair(b"k", &[0; 10239]),
            Err(KvError::PairTooLarge {
                size: 10240,
                limit: 10240
            })
        );
    }
}
