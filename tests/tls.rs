//! Mutual TLS with real node processes: certificates from `ringkv certs`, a cluster that
//! serves clients holding one, and refuses a plaintext client, a peer that stalls or sends
//! garbage instead of a handshake, and a node whose certificate names another member; and a
//! certificate replaced on disk is picked up without a restart.
//!
//! One test: a process runs one client node, and it speaks TLS or not for its whole life.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{TestCluster, assert_success, cli_with, describe, wait_seen, wait_until};

const TLS: &str = "[tls]\nenabled = true\nca = \"tls/ca.crt\"\ncert = \"tls/{id}.crt\"\nkey = \"tls/{id}.key\"\nhandshake_timeout_ms = 3000\n\n[resp]\nenabled = true\nport_offset = 1000\ntls = true\npassword = \"s3cret\"\n\n[metrics]\nenabled = true\nport_offset = 2000\ntls = true\n\n[repair]\naae_interval_ms = 0\n";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn skip(what: &str, why: &str) {
    let line = format!("\n*** SKIPPED {what}: {why} ***\n\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `redis-cli` over TLS to node `i`'s Redis port, with `args`; its stdout and stderr.
fn redis_cli(c: &TestCluster, i: usize, tls: bool, args: &[&str]) -> String {
    let port = (c.addrs[i].port() + 1000).to_string();
    let ca = c.dir.path().join("tls/ca.crt");
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port]);
    if tls {
        cmd.arg("--tls").arg("--cacert").arg(&ca);
    }
    let out = cmd.args(args).output().expect("redis-cli runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .trim()
    .to_string()
}

/// The Redis and metrics listeners serve TLS with the node's certificate, and the Redis one
/// wants the password first.
fn check_listeners(c: &TestCluster) {
    if !have("redis-cli") {
        return skip(
            "the Redis-over-TLS checks",
            "redis-cli not installed (apt-get install redis-tools)",
        );
    }
    let noauth = redis_cli(c, 0, true, &["get", "k"]);
    assert!(noauth.contains("NOAUTH"), "{noauth}");
    let wrong = redis_cli(
        c,
        0,
        true,
        &["--no-auth-warning", "-a", "guess", "get", "k"],
    );
    assert!(wrong.contains("WRONGPASS"), "{wrong}");
    let ok = redis_cli(
        c,
        0,
        true,
        &["--no-auth-warning", "-a", "s3cret", "set", "rk", "rv"],
    );
    assert_eq!(ok, "OK");
    let got = redis_cli(
        c,
        1,
        true,
        &["--no-auth-warning", "-a", "s3cret", "get", "rk"],
    );
    assert_eq!(got, "rv");
    // Plaintext to the TLS port gets no answer it can read.
    let plain = redis_cli(
        c,
        0,
        false,
        &["--no-auth-warning", "-a", "s3cret", "get", "rk"],
    );
    assert_ne!(plain, "rv", "{plain}");
    let py = Command::new("python3")
        .args([
            "-c",
            "import redis, sys; assert int(redis.__version__.split('.')[0]) >= 5",
        ])
        .output();
    if !py.is_ok_and(|o| o.status.success()) {
        return skip("the redis-py check", "redis-py 5 or later is not installed");
    }
    let script = format!(
        "import redis\nr = redis.Redis(host='127.0.0.1', port={}, ssl=True, ssl_ca_certs='{}', password='s3cret', protocol=3)\nassert r.get('rk') == b'rv', r.get('rk')\nprint('ok')",
        c.addrs[2].port() + 1000,
        c.dir.path().join("tls/ca.crt").display()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-py over TLS with HELLO 3 AUTH: {}",
        describe(&out)
    );
    if have("curl") {
        let url = format!("https://127.0.0.1:{}/metrics", c.addrs[0].port() + 2000);
        let out = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(c.dir.path().join("tls/ca.crt"))
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ringkv_ring_members 3"),
            "{}",
            describe(&out)
        );
    } else {
        skip("the HTTPS metrics check", "curl not installed");
    }
}

fn log_has(c: &TestCluster, i: usize, text: &str) -> bool {
    c.log(i).contains(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_certified_clients_and_refuses_everyone_else() {
    let mut c = TestCluster::configure_replicated("t", 3, 3, TLS);
    let tls_dir = c.dir.path().join("tls");
    let dir = tls_dir.to_str().unwrap();
    let out = c.cli(&[
        "certs",
        "--dir",
        dir,
        "--ip",
        "127.0.0.1",
        "t1",
        "t2",
        "t3",
        "client",
    ]);
    assert_success(&out);
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready().await;

    // A client holding a certificate from the cluster's CA reads and writes.
    assert_success(&c.cli(&["put", "-w", "quorum", "k", "v"]));
    let got = c.cli(&["get", "-r", "quorum", "k"]);
    assert_success(&got);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v");

    // A plaintext client is refused, and the node says why.
    let plain = c.dir.path().join("plain.toml");
    let text = std::fs::read_to_string(&c.config).unwrap();
    let text = text
        .replace("[tls]\nenabled = true", "[tls]\nenabled = false")
        .replace("\ntls = true", "\ntls = false")
        .replace("connect_timeout_ms = 10000", "connect_timeout_ms = 2000");
    std::fs::write(&plain, text).unwrap();
    let out = cli_with(&plain, &["get", "k"]);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not connected"),
        "{}",
        describe(&out)
    );
    wait_until(
        "t1 to log the refused plaintext client",
        Duration::from_secs(10),
        || async { log_has(&c, 0, "connection refused: TLS handshake failed") },
    )
    .await;

    check_listeners(&c);

    // Peers that open a connection and stall, or send garbage, hold up nobody: while they
    // are connected (the handshake timeout is 3 s) a new client is served at once.
    let mut stalled: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(c.addrs[0]).unwrap())
        .collect();
    let mut garbage = TcpStream::connect(c.addrs[0]).unwrap();
    let junk: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let _ = garbage.write_all(&junk);
    let started = std::time::Instant::now();
    assert_success(&c.cli(&["put", "--via", "t1", "-w", "all", "k2", "v2"]));
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "a stalled handshake held up a client for {:?}",
        started.elapsed()
    );
    for s in &mut stalled {
        let _ = s.write_all(b"");
    }
    drop(stalled);
    drop(garbage);

    // A certificate replaced on disk is used for the next connection, without a restart.
    let out = c.cli(&["certs", "--dir", dir, "--ip", "127.0.0.1", "t2"]);
    assert_success(&out);
    assert_success(&c.cli(&["put", "--via", "t2", "k3", "v3"]));
    wait_until(
        "t2 to re-read its TLS files",
        Duration::from_secs(10),
        || async { log_has(&c, 1, "TLS files re-read") },
    )
    .await;

    // t1 comes back holding t3's certificate: t1 dials the others (the lower id of a pair
    // dials), and they disconnect it, since its certificate does not name t1.
    assert!(c.stop(0), "t1 stops cleanly");
    let t3_crt = tls_dir.join("t3.crt");
    let t3_key = tls_dir.join("t3.key");
    c.env("RINGKV__TLS__CERT", t3_crt.to_str().unwrap());
    c.env("RINGKV__TLS__KEY", t3_key.to_str().unwrap());
    c.spawn(0);
    wait_until(
        "t2 to refuse the impostor",
        Duration::from_secs(20),
        || async { log_has(&c, 1, "session refused: its certificate does not name t1") },
    )
    .await;
    let client = c.client().await;
    wait_seen(&client, "t2", "t1", false).await;
    // The two genuine members keep serving quorum writes.
    assert_success(&c.cli(&["put", "--via", "t2", "-w", "quorum", "k4", "v4"]));
    let got = c.cli(&["get", "--via", "t3", "-r", "quorum", "k4"]);
    assert_success(&got);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "v4");
    let members = client.members("t3").await.expect("t3 answers");
    assert!(
        members.iter().any(|m| m.id == "t1" && !m.up),
        "t3 must not count the impostor as t1: {members:?}"
    );
}
