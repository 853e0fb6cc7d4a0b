//! `ringkv bench` against a real 3-node, 3-replica cluster: its load (run on the client node's
//! runtime) writes every key, reads and updates complete without errors, what it wrote reads
//! back from every replica, and bad options are refused by name.

mod common;

use common::{TestCluster, describe};
use ringkv::RequestOptions;
use ringkv_actors::core::quorum::Consistency;
use serde_json::Value;

/// Runs `ringkv bench <args> --json`, which must succeed, and parses its report.
fn bench_json(c: &TestCluster, args: &[&str]) -> Value {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let out = c.cli(&all);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_loads_reads_and_updates_without_errors() {
    let c = TestCluster::start_replicated("bch", 3, 3, "").await;
    let keys = 300u64;
    let read = bench_json(
        &c,
        &[
            "--workload",
            "read",
            "--keys",
            &keys.to_string(),
            "--value-size",
            "40",
            "--concurrency",
            "8",
            "--duration",
            "1",
        ],
    );
    assert_eq!(read["workload"], "read", "{read}");
    assert_eq!(read["loaded_keys"], keys, "{read}");
    assert_eq!(read["errors"], 0, "{read}");
    assert!(read["ops"].as_u64().unwrap() > 0, "{read}");

    // The load wrote every key, to every replica: the bench's value is bytes i % 251.
    let client = c.client().await;
    let all = RequestOptions {
        r: Some(Consistency::All),
        ..Default::default()
    };
    let expected: Vec<u8> = (0..40u32).map(|i| (i % 251) as u8).collect();
    for i in [0, keys / 2, keys - 1] {
        let key = format!("bench-{i:012}");
        let got = client.get_with(&key, &all).await.expect("r=all read");
        assert_eq!(got.values, vec![expected.clone()], "{key}");
    }

    let update = bench_json(
        &c,
        &[
            "--workload",
            "update",
            "--keys",
            &keys.to_string(),
            "--concurrency",
            "8",
            "--duration",
            "1",
        ],
    );
    assert_eq!(update["errors"], 0, "{update}");
    assert!(update["ops"].as_u64().unwrap() > 0, "{update}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_refuses_bad_options_by_name() {
    let c = TestCluster::start_replicated("bchbad", 3, 3, "").await;
    let cases: [(&[&str], &str); 3] = [
        (&["--workload", "scan"], "unknown workload 'scan'"),
        (
            &["--keys", "0"],
            "--keys and --concurrency must be at least 1",
        ),
        (
            &["--concurrency", "0"],
            "--keys and --concurrency must be at least 1",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["bench", "--duration", "1"];
        all.extend_from_slice(args);
        let out = c.cli(&all);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{args:?}: {}",
            describe(&out)
        );
    }
    // A value over the pair limit fails the load with the pair-size error, naming the key.
    let out = c.cli(&[
        "bench",
        "--value-size",
        "2000000",
        "--keys",
        "3",
        "--duration",
        "1",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("loading key") && err.contains("too large"),
        "{}",
        describe(&out)
    );
}
