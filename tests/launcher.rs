//! `ringkv cluster up | status | down`, driven as a user would from the shell.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, cli_with, free_port};

fn write_base_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("cluster.toml");
    std::fs::write(
        &path,
        "[cluster]\ncookie = \"launcher-test\"\npartitions = 16\nreplicas = 1\n\n[[members]]\nid = \"n1\"\naddr = \"127.0.0.1:7401\"\n",
    )
    .unwrap();
    path
}

fn status_json(config: &std::path::Path, data: &std::path::Path) -> serde_json::Value {
    let out = cli_with(
        config,
        &[
            "cluster",
            "status",
            "--json",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    common::assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `ringkv cluster up --detach --nodes N --base-port PORT --data-dir DATA [extra…]`.
fn cluster_up(
    config: &std::path::Path,
    data: &std::path::Path,
    nodes: u32,
    port: &str,
    extra: &[&str],
) -> std::process::Output {
    let nodes = nodes.to_string();
    let mut args = vec![
        "cluster",
        "up",
        "--detach",
        "--nodes",
        &nodes,
        "--base-port",
        port,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli_with(config, &args)
}

#[test]
fn detached_cluster_up_status_down() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_base_config(tmp.path());
    let data = tmp.path().join("state");
    let port = free_port().to_string();
    let out = cluster_up(&config, &data, 2, &port, &[]);
    common::assert_success(&out);
    let effective = data.join("cluster.toml");
    assert!(
        effective.exists(),
        "the effective configuration is written to DIR/cluster.toml"
    );
    let status = status_json(&config, &data);
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(
        nodes
            .iter()
            .all(|n| n["status"] == "up" && n["pid"].as_u64().unwrap() > 0)
    );
    assert_eq!(
        nodes[1]["addr"],
        format!("127.0.0.1:{}", port.parse::<u16>().unwrap() + 1)
    );

    assert_eq!(
        cli_with(&effective, &["put", "k", "v"]).status.code(),
        Some(0)
    );
    let got = cli_with(&effective, &["get", "k"]);
    assert_eq!(got.stdout, b"v\n");

    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n["pid"].as_u64().unwrap() as u32)
        .collect();
    let out = cli_with(
        &config,
        &["cluster", "down", "--data-dir", data.to_str().unwrap()],
    );
    common::assert_success(&out);
    for pid in pids {
        assert!(common::process_gone(pid), "node {pid} stopped");
    }
    let out = cli_with(
        &config,
        &["cluster", "status", "--data-dir", data.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "no cluster left to report");
}

#[test]
fn foreground_cluster_prefixes_output_and_stops_on_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_base_config(tmp.path());
    let data = tmp.path().join("fg");
    let port = free_port().to_string();
    let mut up = Command::new(bin())
        .args([
            "--config",
            config.to_str().unwrap(),
            "cluster",
            "up",
            "--base-port",
            &port,
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let (mut ready, mut prefixed) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(ready && prefixed) && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        ready |= line.contains("node(s) ready");
        prefixed |= line.starts_with("[n1] ");
    }
    assert!(
        ready && prefixed,
        "ready line and [n1]-prefixed node output"
    );
    let status = status_json(&config, &data);
    let pid = status["nodes"][0]["pid"].as_u64().unwrap() as u32;
    assert!(
        std::fs::read_to_string(data.join("n1").join("node.log"))
            .unwrap()
            .contains("node ready")
    );
    // SAFETY: signalling our own child, as Ctrl-C would.
    unsafe {
        libc::kill(up.id() as libc::pid_t, libc::SIGINT);
    }
    let exit = up.wait().unwrap();
    assert!(exit.success(), "launcher exits cleanly: {exit}");
    assert!(common::process_gone(pid), "node stopped with the launcher");
}

#[test]
fn detached_cluster_on_distinct_loopback_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_base_config(tmp.path());
    let data = tmp.path().join("distinct");
    let port = free_port();
    let out = cluster_up(&config, &data, 3, &port.to_string(), &["--distinct-addrs"]);
    common::assert_success(&out);
    let status = status_json(&config, &data);
    let nodes = status["nodes"].as_array().unwrap();
    let addrs: Vec<&str> = nodes.iter().map(|n| n["addr"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.{}:{}", i + 1, port + i))
        .collect();
    assert_eq!(addrs, want);
    assert!(nodes.iter().all(|n| n["status"] == "up"), "{status}");
    let effective = data.join("cluster.toml");
    common::assert_success(&cli_with(&effective, &["put", "k", "v"]));
    assert_eq!(cli_with(&effective, &["get", "k"]).stdout, b"v\n");
    let out = cli_with(
        &config,
        &["cluster", "down", "--data-dir", data.to_str().unwrap()],
    );
    common::assert_success(&out);
}

#[test]
fn cluster_up_on_ports_another_cluster_serves_fails_instead_of_adopting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_base_config(tmp.path());
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    let port = free_port().to_string();
    common::assert_success(&cluster_up(&config, &first, 1, &port, &[]));
    let out = cluster_up(&config, &second, 1, &port, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a second cluster on the same ports must not report ready: {stderr}"
    );
    assert!(
        stderr.contains("another process") || stderr.contains("exited during startup"),
        "the failure says why: {stderr}"
    );
    // The first cluster is untouched and still serves.
    let effective = first.join("cluster.toml");
    assert_eq!(
        cli_with(&effective, &["put", "k", "v"]).status.code(),
        Some(0)
    );
    let out = cli_with(
        &config,
        &["cluster", "down", "--data-dir", first.to_str().unwrap()],
    );
    common::assert_success(&out);
}
