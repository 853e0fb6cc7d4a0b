//! Every decoder that reads bytes from outside a node, on stable and on every run: the
//! committed fuzz corpus (`actors/fuzz/seeds/`) and every crash the fuzzers found
//! (`actors/fuzz/regressions/`) replayed through `ringkv_actors::fuzz_checks`, random and
//! mutated inputs from proptest, and (with nightly and cargo-fuzz) each cargo-fuzz target run
//! for a bounded time from the corpus.
//!
//! `RINGKV_WRITE_SEEDS=1 cargo test --test decoders` rewrites the corpus from [`seeds`].

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use ringkv_actors::core::codec::{encode_object, encode_wire};
use ringkv_actors::core::version::{ConflictPolicy, Object};
use ringkv_actors::fuzz_checks;
use ringkv_actors::protocol::{
    ChunkRequest, GetRequest, Heartbeat, PutRequest, TransferChunk, TransferReport, encode_context,
};
use ringkv_actors::storage::log_record::{LogEntry, encode_record};
use serde_bytes::ByteBuf;

type Check = fn(&[u8]);

/// Writes to the real stderr, past the test harness's capture, so CI logs show it.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(text.as_bytes());
}

const TARGETS: [(&str, Check); 5] = [
    ("wire", fuzz_checks::wire),
    ("object", fuzz_checks::object),
    ("context", fuzz_checks::context),
    ("commit_log", fuzz_checks::commit_log),
    ("resp", fuzz_checks::resp),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("actors/fuzz")
}

/// An object with two concurrent versions and a tombstone in its history.
fn sample_object() -> Object {
    let policy = ConflictPolicy::Siblings { max_siblings: 8 };
    let mut o = Object::default();
    let first = o.update("n1~1", 1, None, Some(b"one".to_vec()), 10, policy);
    o.update("n2~1", 1, None, Some(b"two".to_vec()), 11, policy);
    o.update("n1~1", 2, Some(&first), None, 12, policy);
    o
}

fn tagged(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(body);
    v
}

/// Real encodings of each input kind, the fuzzers' starting points.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let o = sample_object();
    let encoded = encode_object(&o);
    let mut log = Vec::new();
    for (i, key) in [b"k1".as_slice(), b"key-two"].iter().enumerate() {
        let e = LogEntry {
            partition: i as u32,
            key: key.to_vec(),
            object: encoded.clone(),
        };
        encode_record(&e, &mut log);
    }
    let get = GetRequest {
        key: ByteBuf::from(b"k".to_vec()),
        r: None,
        timeout_ms: Some(500),
    };
    let put = PutRequest {
        key: ByteBuf::from(b"k".to_vec()),
        value: Some(ByteBuf::from(b"v".to_vec())),
        context: Some(ByteBuf::from(encode_context(&o.read_context()))),
        w: None,
        timeout_ms: None,
        not_after_ms: Some(1),
    };
    let beat = Heartbeat {
        from: "n1".into(),
        ring_version: 3,
        ring_hash: 42,
    };
    let ask = ChunkRequest {
        from: "n4".into(),
        partition: 7,
        after: Some(ByteBuf::from(b"k".to_vec())),
        max_keys: 16,
        max_bytes: 4096,
        epoch: 2,
    };
    let chunk = TransferChunk {
        pairs: vec![(ByteBuf::from(b"k".to_vec()), ByteBuf::from(encoded.clone()))],
        more: true,
        total_keys: 9,
    };
    let report = TransferReport {
        node: "n4".into(),
        partition: 7,
        epoch: 2,
    };
    vec![
        ("wire", tagged(0, encode_wire(&get))),
        ("wire", tagged(1, encode_wire(&put))),
        ("wire", tagged(6, encode_wire(&beat))),
        ("wire", tagged(8, encode_wire(&ask))),
        ("wire", tagged(9, encode_wire(&chunk))),
        ("wire", tagged(10, encode_wire(&report))),
        ("object", encoded.clone()),
        ("object", encode_object(&Object::default())),
        ("context", encode_context(&o.read_context())),
        ("commit_log", log),
        (
            "resp",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec(),
        ),
        ("resp", b"PING\r\nHELLO 3 AUTH default pw\r\n".to_vec()),
        ("resp", b"*1\r\n$-1\r\n*0\r\n".to_vec()),
    ]
}

fn check_of(target: &str) -> Check {
    TARGETS.iter().find(|(t, _)| *t == target).unwrap().1
}

/// File name for an input: a hash of its bytes, so rewriting the corpus is idempotent.
fn name_of(data: &[u8]) -> String {
    format!("{:016x}", xxhash(data))
}

fn xxhash(data: &[u8]) -> u64 {
    // FNV-1a: enough to name files apart; no dependency for it.
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn the_corpus_and_every_crash_found_pass_their_checks() {
    if std::env::var_os("RINGKV_WRITE_SEEDS").is_some() {
        for (target, data) in seeds() {
            let dir = fuzz_dir().join("seeds").join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name_of(&data)), &data).unwrap();
        }
    }
    for (target, data) in seeds() {
        check_of(target)(&data);
    }
    let mut replayed = 0;
    for (target, check) in TARGETS {
        let seeds = files(&fuzz_dir().join("seeds").join(target));
        assert!(!seeds.is_empty(), "no committed corpus for {target}");
        for path in seeds
            .into_iter()
            .chain(files(&fuzz_dir().join("regressions").join(target)))
        {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its check", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_a_decoder(which in 0..TARGETS.len(), data in proptest::collection::vec(any::<u8>(), 0..512)) {
        (TARGETS[which].1)(&data);
    }

    #[test]
    fn damaged_real_encodings_never_panic_a_decoder(
        which in 0usize..13,
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
    ) {
        let all = seeds();
        let (target, mut data) = all[which % all.len()].clone();
        for (at, byte) in flips {
            if !data.is_empty() {
                let i = at.index(data.len());
                data[i] ^= byte;
            }
        }
        let keep = if data.is_empty() { 0 } else { cut.index(data.len() + 1) };
        data.truncate(keep);
        check_of(target)(&data);
    }
}

/// Each cargo-fuzz target runs from the corpus for `RINGKV_FUZZ_SECS` (15) seconds; a crash
/// fails the test, and its input (in `actors/fuzz/artifacts/`) belongs in `regressions/`.
#[test]
fn fuzz_targets_find_no_crash_in_their_time() {
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        say(
            "\n*** SKIPPED fuzz_targets_find_no_crash_in_their_time: needs the nightly toolchain and cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz) ***\n",
        );
        return;
    }
    let secs: u64 = std::env::var("RINGKV_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let dir = fuzz_dir();
    let scratch = tempfile::tempdir().unwrap();
    // A target dir of its own: nightly's sanitizer build would otherwise evict the main one.
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz");
    for (target, _) in TARGETS {
        let corpus = scratch.path().join(target);
        std::fs::create_dir_all(&corpus).unwrap();
        let out = Command::new("cargo")
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target_dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg(dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg("-max_len=4096")
            .arg("-print_final_stats=1")
            .output()
            .expect("cargo fuzz runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "fuzz target {target} failed:\n{}",
            stderr
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let runs = stderr
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        say(&format!(
            "fuzz target {target}: {runs} inputs in {secs} s, no crash\n"
        ));
        assert!(
            runs.parse::<u64>().is_ok_and(|n| n > 0),
            "fuzz target {target} ran no input:\n{stderr}"
        );
    }
}
