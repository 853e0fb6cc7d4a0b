//! A node that hangs (SIGSTOP) before anyone has noticed: requests are not held for their
//! whole timeout. The SDK gives up on the hung coordinator after its attempt timeout and goes
//! to another node; coordinators whose replica hangs ask the spare replicas. A new client (a
//! CLI command) does not wait for the hung node's handshake, which never completes.

mod common;

use std::time::{Duration, Instant};

use common::{TestCluster, describe, wait_seen, wait_until};
use ringkv::RequestOptions;
use ringkv_actors::core::quorum::Consistency;

#[tokio::test(flavor = "multi_thread")]
async fn requests_route_around_a_node_hung_before_detection() {
    // A slow detector, so every request below runs before the hung node is marked down.
    let extra = "[node]\nheartbeat_ms = 1000\nmissed_heartbeats = 30\n";
    let c = TestCluster::start_replicated("hn", 3, 3, extra).await;
    let client = c.client().await;
    for i in 0..60 {
        client.put(format!("h{i}"), "before").await.unwrap();
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(c.pid(1) as libc::pid_t, libc::SIGSTOP) };
    let quorum = RequestOptions {
        r: Some(Consistency::Quorum),
        w: Some(Consistency::Quorum),
        ..Default::default()
    };
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let key = format!("h{i}");
        let started = Instant::now();
        client
            .put_with(&key, "during", &quorum)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        let r = client
            .get_with(&key, &quorum)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        assert!(
            r.values.contains(&b"during".to_vec()),
            "{key}: {:?}",
            r.values
        );
        slowest = slowest.max(started.elapsed());
    }
    // SAFETY: as above.
    unsafe { libc::kill(c.pid(1) as libc::pid_t, libc::SIGCONT) };
    // Each request may lose one attempt timeout (1 s) to the hung node, never its 5 s deadline.
    assert!(
        slowest < Duration::from_millis(2500),
        "a put+get pair took {slowest:?}"
    );
}

/// Whether process `pid` is stopped (state `T` in `/proc/<pid>/stat`).
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_given_up_by_the_client_is_not_applied_when_the_node_resumes() {
    let extra = "[node]\nheartbeat_ms = 1000\nmissed_heartbeats = 30\n";
    let c = TestCluster::start_replicated("hs", 3, 3, extra).await;
    let client = c.client().await;
    client.put("k", "before").await.unwrap();
    let hung = c.ids[1].clone();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(c.pid(1) as libc::pid_t, libc::SIGSTOP) };
    let pid = c.pid(1);
    wait_until(
        "the node to be stopped",
        Duration::from_secs(5),
        move || async move { stopped(pid) },
    )
    .await;
    let stale = RequestOptions {
        via: Some(hung.clone()),
        timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let r = client.put_with("k", "stale", &stale).await;
    assert!(r.is_err(), "the hung node cannot answer: {r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: as above.
    unsafe { libc::kill(c.pid(1) as libc::pid_t, libc::SIGCONT) };
    let log = c.log_path(1);
    wait_until(
        "the resumed node to refuse the expired write",
        Duration::from_secs(10),
        move || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .is_ok_and(|l| l.contains("refused writes whose attempt had already ended"))
            }
        },
    )
    .await;
    let via = RequestOptions {
        via: Some(hung.clone()),
        r: Some(Consistency::All),
        ..Default::default()
    };
    let read = client.get_with("k", &via).await.unwrap();
    assert_eq!(
        read.values,
        vec![b"before".to_vec()],
        "the expired write was applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_keep_succeeding_while_a_resumed_node_reconnects() {
    let c = TestCluster::start_replicated("rs", 3, 3, "").await;
    let client = c.client().await;
    for i in 0..50 {
        client.put(format!("r{i}"), "v").await.unwrap();
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(c.pid(1) as libc::pid_t, libc::SIGSTOP) };
    // The others mark it down and close its sessions; on waking it finds them closed and
    // sees too few replicas until it has re-dialed.
    wait_seen(&client, &c.ids[0], &c.ids[1], false).await;
    wait_seen(&client, &c.ids[2], &c.ids[1], false).await;
    // SAFETY: as above.
    unsafe { libc::kill(c.pid(1) as libc::pid_t, libc::SIGCONT) };
    let quorum = RequestOptions {
        r: Some(Consistency::Quorum),
        ..Default::default()
    };
    for round in 0..6 {
        for i in 0..50 {
            let key = format!("r{i}");
            let r = client
                .get_with(&key, &quorum)
                .await
                .unwrap_or_else(|e| panic!("round {round}, get {key}: {e}"));
            assert_eq!(r.values, vec![b"v".to_vec()], "{key}");
        }
    }
}

/// Resumes a stopped process when dropped, so a failing test leaves no node stopped.
struct Resume(u32);

/// SIGSTOPs process `pid` and waits until it is stopped; it resumes when the guard drops.
async fn hang(pid: u32) -> Resume {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let resume = Resume(pid);
    wait_until(
        "the node to be stopped",
        Duration::from_secs(5),
        move || async move { stopped(pid) },
    )
    .await;
    resume
}

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_commands_do_not_wait_for_a_hung_nodes_handshake() {
    let c = TestCluster::start_replicated("hc", 3, 3, "").await;
    let pid = c.pid(1);
    let _resume = hang(pid).await;
    // Each command is a new process and so a new client: the stopped node accepts its TCP
    // connection (the kernel does) but never answers the handshake. The harness sets
    // connect_timeout_ms = 10000, the cost per command of waiting for it.
    const PUTS: usize = 50;
    // The target is 10 s; the bound leaves room for a loaded 2-core machine. Checked after
    // every put, so a client that waits for the handshake fails after a few, not 50 × 10 s.
    const BOUND: Duration = Duration::from_secs(30);
    let config = c.config.clone();
    let (total, slowest) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        for i in 0..PUTS {
            let one = Instant::now();
            let out = common::cli_with(&config, &["put", &format!("c{i}"), "v"]);
            assert_eq!(out.status.code(), Some(0), "put c{i}: {}", describe(&out));
            slowest = slowest.max(one.elapsed());
            let so_far = started.elapsed();
            assert!(
                so_far < BOUND,
                "{} of {PUTS} puts took {so_far:?} (slowest {slowest:?})",
                i + 1
            );
        }
        (started.elapsed(), slowest)
    })
    .await
    .unwrap();
    println!("{PUTS} CLI puts with a node stopped: {total:?} in all, slowest {slowest:?}");
    let out = c.cli(&["get", "c0"]);
    assert_eq!(out.status.code(), Some(0), "get c0: {}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
}

/// Process `pid`'s TCP connections to `port` (in any state), from `/proc`.
fn sockets_to(pid: u32, port: u16) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols[2].rsplit(':').next().unwrap_or("");
            u16::from_str_radix(remote_port, 16) == Ok(port) && inodes.contains(cols[9])
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_keeps_one_connection_to_a_node_that_never_answers_its_handshake() {
    let c = TestCluster::start_replicated("hk", 3, 3, "").await;
    let pid = c.pid(1);
    let _resume = hang(pid).await;
    // A long-lived client in a process of its own (this one has had sessions with the node
    // since before it stopped). Its requests whose first replica is the stopped node re-dial
    // it once a second; each dial replaces the last one's stalled handshake, not adds to it.
    let mut bench = std::process::Command::new(common::bin())
        .arg("--config")
        .arg(&c.config)
        .args(["bench", "--workload", "update", "--keys", "1000"])
        .args(["--concurrency", "4", "--duration", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ringkv bench runs");
    let (bench_pid, port) = (bench.id(), c.addrs[1].port());
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Sampled while the bench runs (it re-dials about four times in its 4 s).
    while bench.try_wait().unwrap().is_none() {
        most = most.max(sockets_to(bench_pid, port));
        assert!(Instant::now() < deadline, "the bench did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bench.wait().unwrap().success(), "the bench failed");
    assert!(
        (1..=2).contains(&most),
        "the bench held up to {most} connections to the stopped node"
    );
}
