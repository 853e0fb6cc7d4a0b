//! A node that hangs (SIGSTOP) before anyone has noticed: requests are not held for their
//! whole timeout. The SDK gives up on the hung coordinator after its attempt timeout and goes
//! to another node; coordinators whose replica hangs ask the spare replicas.

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;
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
