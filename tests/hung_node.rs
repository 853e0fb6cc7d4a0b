//! A node that hangs (SIGSTOP) before anyone has noticed: requests are not held for their
//! whole timeout. The SDK gives up on the hung coordinator after its attempt timeout and goes
//! to another node; coordinators whose replica hangs ask the spare replicas.

mod common;

use std::time::{Duration, Instant};

use common::{TestCluster, wait_seen, wait_until};
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
                    .is_ok_and(|l| l.contains("refused a write the client had given up on"))
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
