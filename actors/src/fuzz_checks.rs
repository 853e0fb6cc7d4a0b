//! What each fuzz target checks on one input, shared by the cargo-fuzz targets
//! (`actors/fuzz/`) and the test that replays their corpus and every crash found
//! (`tests/decoders.rs`). Every function takes bytes from outside the node, must return
//! without panicking whatever they are, and checks that what decodes re-encodes to something
//! that decodes to the same thing.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::core::codec::{decode_object, decode_wire, encode_object, encode_wire};
use crate::core::placement::Placement;
use crate::gateway::resp::frame::{Limits, parse_command};
use crate::protocol::{
    AaeRound, ChunkRequest, GetRequest, Heartbeat, HintsQuery, PutRequest, ReadAnswer, ReadAsk,
    ReapRequest, SegmentRequest, TransferChunk, TransferReport, TreeRequest, WriteAnswer, WriteAsk,
    decode_context, encode_context,
};
use crate::storage::log_record::{decode_records, encode_record};

/// Decodes `data` as `T`; what decodes must survive a re-encoding.
fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    if let Ok(v) = decode_wire::<T>(data) {
        let again = encode_wire(&v);
        let back: T = decode_wire(&again).expect("a re-encoded payload decodes");
        assert_eq!(encode_wire(&back), again, "re-encoding is stable");
    }
}

/// A payload another process sent: the first byte picks the message type, the rest is its
/// MessagePack body, as ractor_cluster hands it to `Wire::from_bytes`.
pub fn wire(data: &[u8]) {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    match kind % 16 {
        0 => round_trip::<GetRequest>(body),
        1 => round_trip::<PutRequest>(body),
        2 => round_trip::<ReadAsk>(body),
        3 => round_trip::<ReadAnswer>(body),
        4 => round_trip::<WriteAsk>(body),
        5 => round_trip::<WriteAnswer>(body),
        6 => round_trip::<Heartbeat>(body),
        7 => round_trip::<Placement>(body),
        8 => round_trip::<ChunkRequest>(body),
        9 => round_trip::<TransferChunk>(body),
        10 => round_trip::<TransferReport>(body),
        11 => round_trip::<TreeRequest>(body),
        12 => round_trip::<SegmentRequest>(body),
        13 => round_trip::<HintsQuery>(body),
        14 => round_trip::<ReapRequest>(body),
        _ => round_trip::<AaeRound>(body),
    }
}

/// A stored or replicated object: what decodes keeps its digest through a re-encoding, and
/// merging it into itself changes nothing.
pub fn object(data: &[u8]) {
    let Ok(o) = decode_object(data) else {
        return;
    };
    let digest = o.digest();
    let again = decode_object(&encode_object(&o)).expect("a re-encoded object decodes");
    assert_eq!(again.digest(), digest, "the digest survives a re-encoding");
    let _ = o.values().count();
}

/// A causal context a client passed back.
pub fn context(data: &[u8]) {
    if let Ok(c) = decode_context(data) {
        let again = decode_context(&encode_context(&c)).expect("a re-encoded context decodes");
        assert_eq!(encode_context(&again), encode_context(&c));
    }
}

/// Commit-log bytes as read back from disk after a crash: decoding stops at the first torn or
/// corrupt record, and the records before it re-encode to the bytes they came from.
pub fn commit_log(data: &[u8]) {
    let (entries, clean) = decode_records(data);
    let mut out = Vec::new();
    for e in &entries {
        encode_record(e, &mut out);
    }
    assert!(
        data.starts_with(&out),
        "decoded records re-encode to a prefix of the input"
    );
    if clean {
        assert_eq!(out.len(), data.len(), "a clean decode used every byte");
    }
}

/// Bytes a Redis client sent: every parsed command consumes at least one byte and no more
/// than there are, and its arguments respect the limits.
pub fn resp(data: &[u8]) {
    let limits = Limits {
        max_bulk: 4096,
        max_args: 64,
        max_inline: 4096,
    };
    let mut at = 0;
    while at < data.len() {
        match parse_command(&data[at..], &limits) {
            Ok(Some((args, used))) => {
                assert!(
                    used >= 1 && at + used <= data.len(),
                    "consumed {used} at {at}"
                );
                assert!(args.len() <= limits.max_args);
                assert!(
                    args.iter()
                        .all(|a| a.len() <= limits.max_bulk.max(limits.max_inline))
                );
                at += used;
            }
            Ok(None) | Err(_) => return,
        }
    }
}
