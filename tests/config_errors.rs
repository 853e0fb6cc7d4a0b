//! Configuration mistakes stop a node at once with exit code 2 and a message saying what to fix.

mod common;

use common::{cli_with, touch};

fn run_node(body: &str, node: &str) -> (Option<i32>, String) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cluster.toml");
    std::fs::write(&path, body.replace("{tmp}", tmp.path().to_str().unwrap())).unwrap();
    touch(&tmp.path().join("a-file"));
    let out = cli_with(&path, &["node", "--node", node]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const BASE: &str = "[cluster]\ncookie = \"c\"\npartitions = 16\nreplicas = 1\ndata_dir = \"data\"\n\n[[members]]\nid = \"n1\"\naddr = \"127.0.0.1:1\"\n";

#[test]
fn each_mistake_is_named() {
    let cases = [
        (
            BASE.replace("partitions = 16", "partitions = 48"),
            "n1",
            "cluster.partitions must be a power of two",
        ),
        (
            BASE.replace("replicas = 1", "replicas = 2"),
            "n1",
            "cluster.replicas = 2 is larger than the 1 member(s)",
        ),
        (
            BASE.to_string(),
            "n7",
            "unknown node id 'n7': members are n1",
        ),
        (
            BASE.replace("data_dir = \"data\"", "data_dir = \"{tmp}/a-file/sub\""),
            "n1",
            "is not writable",
        ),
        (
            BASE.replace("127.0.0.1:1", "nowhere"),
            "n1",
            "member address 'nowhere' is not ip:port",
        ),
        (
            format!("{BASE}\n[storage]\ndurability = \"sometimes\"\n"),
            "n1",
            "durability must be sync or buffered, got 'sometimes'",
        ),
        (
            format!("{BASE}\n[autoscale]\nenabled = true\nmin_nodes = 0\n"),
            "n1",
            "autoscale.min_nodes = 0 is below the 1 replicas of every key",
        ),
        (
            format!("{BASE}\n[autoscale]\nenabled = true\nprovisioner = \"command\"\n"),
            "n1",
            "needs autoscale.command.provision",
        ),
        (
            format!(
                "{BASE}\n[autoscale]\nenabled = true\nprovisioner = \"kubernetes\"\n\n[autoscale.kubernetes]\napi_url = \"https://10.0.0.1\"\n"
            ),
            "n1",
            "kubectl proxy",
        ),
        (
            format!("{BASE}\n[storage]\ndurabilty = \"sync\"\n"),
            "n1",
            "unknown field `durabilty`",
        ),
        (
            format!("{BASE}\n[storage]\ngroup_commit_us = 250000\n"),
            "n1",
            "storage.group_commit_us (250000) must be at most 100000",
        ),
        (
            format!("{BASE}\n[storage]\nlog_segment_mb = 64\nmin_free_mb = 100\n"),
            "n1",
            "storage.min_free_mb (100) must be 0 or at least twice storage.log_segment_mb (64)",
        ),
    ];
    for (body, node, want) in cases {
        let (code, err) = run_node(&body, node);
        assert_eq!(code, Some(2), "{want}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "expected '{want}' in: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn missing_file_is_named() {
    let out = cli_with(
        std::path::Path::new("/nonexistent/cluster.toml"),
        &["get", "k"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cluster.toml not found"));
}
