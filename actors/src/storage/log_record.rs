//! The commit log's on-disk format: segment files of checksummed records, and reading them.
//!
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload`, payload =
//! `partition: u32 LE | key_len: u32 LE | key | object`. A torn or corrupt tail ends a segment.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// One logged write: the full object a vnode stored for a key after applying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Partition (vnode) the key belongs to.
    pub partition: u32,
    /// The key bytes.
    pub key: Vec<u8>,
    /// The encoded object stored for the key.
    pub object: Vec<u8>,
}

/// The file of segment `id` in `dir`.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:010}.log"))
}

/// Ids of the segments present in `dir`, ascending.
pub fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Appends `e` as one record: length, CRC-32 of the rest, partition, key length, key, object.
pub fn encode_record(e: &LogEntry, out: &mut Vec<u8>) {
    let payload_len = 8 + e.key.len() + e.object.len();
    let start = out.len();
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&e.partition.to_le_bytes());
    out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.key);
    out.extend_from_slice(&e.object);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes consecutive records from `bytes`, stopping at the first torn or corrupt one.
/// Returns the entries and whether the whole input was consumed cleanly.
pub fn decode_records(bytes: &[u8]) -> (Vec<LogEntry>, bool) {
    decode_records_of(bytes, None)
}

/// Like [`decode_records`], keeping only `only`'s entries when given. Every record is still
/// checked, so the prefix kept is the same whichever partition is asked for.
pub fn decode_records_of(bytes: &[u8], only: Option<u32>) -> (Vec<LogEntry>, bool) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else {
            return (out, false);
        };
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            return (out, false);
        };
        if len < 8 || crc32fast::hash(payload) != crc {
            return (out, false);
        }
        let partition = u32::from_le_bytes(payload[0..4].try_into().unwrap());
        let key_len = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
        if 8 + key_len > len {
            return (out, false);
        }
        if only.is_none_or(|p| p == partition) {
            out.push(LogEntry {
                partition,
                key: payload[8..8 + key_len].to_vec(),
                object: payload[8 + key_len..].to_vec(),
            });
        }
        at += 8 + len;
    }
    (out, true)
}

/// Reads every entry of every segment in `dir`, oldest first; `only` keeps one partition.
pub fn read_entries(dir: &Path, only: Option<u32>) -> io::Result<Vec<LogEntry>> {
    let ids = segment_ids(dir)?;
    let newest = ids.last().copied();
    read_segments(dir, &ids, newest, only)
}

/// Reads the entries of segments `ids` (ascending) in `dir`, oldest first; `only` keeps one
/// partition. `newest` is the segment that may be mid-append, so a torn tail there is no news.
/// A segment removed while reading was released, and segments are released oldest first, so
/// everything read before it was released too: its entries are durable in the vnode files.
pub fn read_segments(
    dir: &Path,
    ids: &[u64],
    newest: Option<u64>,
    only: Option<u32>,
) -> io::Result<Vec<LogEntry>> {
    let mut all = Vec::new();
    for &id in ids {
        let bytes = match fs::read(segment_path(dir, id)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                all.clear();
                continue;
            }
            Err(e) => return Err(e),
        };
        let (entries, clean) = decode_records_of(&bytes, only);
        // An older segment ends torn only after a crash.
        if !clean && Some(id) != newest {
            tracing::warn!(
                segment = id,
                kept = entries.len(),
                "commit log segment has a torn or corrupt tail; replaying the valid prefix"
            );
        }
        all.extend(entries);
    }
    Ok(all)
}

/// An entry of partition `p` with text key and object, for tests.
#[cfg(test)]
pub(crate) fn entry(p: u32, k: &str, v: &str) -> LogEntry {
    LogEntry {
        partition: p,
        key: k.as_bytes().to_vec(),
        object: v.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn torn_tail_keeps_the_valid_prefix() {
        let mut buf = Vec::new();
        encode_record(&entry(3, "k", "v"), &mut buf);
        encode_record(&entry(3, "k2", "v2"), &mut buf);
        let cut = buf.len() - 3;
        let (entries, clean) = decode_records(&buf[..cut]);
        assert_eq!((entries.len(), clean), (1, false));
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(decode_records(&flipped).0.len(), 1);
    }

    #[test]
    fn a_corrupt_record_of_another_partition_still_ends_the_prefix() {
        let mut buf = Vec::new();
        encode_record(&entry(1, "a", "x"), &mut buf);
        let second = buf.len();
        encode_record(&entry(2, "b", "y"), &mut buf);
        encode_record(&entry(1, "c", "z"), &mut buf);
        buf[second + 9] ^= 0xff;
        assert_eq!(
            decode_records_of(&buf, Some(1)),
            (vec![entry(1, "a", "x")], false)
        );
    }

    #[test]
    fn a_segment_released_while_reading_drops_what_was_read_before_it() {
        let dir = tempfile::tempdir().unwrap();
        for (id, key) in [(3, "old"), (5, "new")] {
            let mut buf = Vec::new();
            encode_record(&entry(1, key, "v"), &mut buf);
            fs::write(segment_path(dir.path(), id), buf).unwrap();
        }
        let read = read_segments(dir.path(), &[3, 4, 5], Some(5), Some(1)).unwrap();
        assert_eq!(read, vec![entry(1, "new", "v")]);
    }

    proptest! {
        #[test]
        fn records_round_trip(es in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..80)), 0..20)) {
            let entries: Vec<LogEntry> = es.into_iter().map(|(partition, key, object)| LogEntry { partition, key, object }).collect();
            let mut buf = Vec::new();
            for e in &entries { encode_record(e, &mut buf); }
            prop_assert_eq!(decode_records(&buf), (entries, true));
        }

        #[test]
        fn filtering_keeps_exactly_that_partitions_entries_in_order(es in prop::collection::vec((0u32..4, prop::collection::vec(any::<u8>(), 0..8)), 0..30), only in 0u32..4) {
            let entries: Vec<LogEntry> = es.into_iter().map(|(partition, key)| LogEntry { partition, key, object: vec![7] }).collect();
            let mut buf = Vec::new();
            for e in &entries { encode_record(e, &mut buf); }
            let kept: Vec<LogEntry> = entries.iter().filter(|e| e.partition == only).cloned().collect();
            prop_assert_eq!(decode_records_of(&buf, Some(only)), (kept, true));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_records(&bytes);
        }
    }
}
