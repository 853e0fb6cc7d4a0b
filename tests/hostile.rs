//! A hostile peer on a node's member port: frames announcing more than the frame limit,
//! frames of garbage, a frame that never finishes, and many idle connections, all at once.
//! The node must keep serving its clients throughout, and be alive and serving afterwards.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestCluster;
use ringkv::RequestOptions;

/// Deterministic junk: no test input should depend on a random seed it does not print.
fn junk(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_do_not_take_a_node_down() {
    let mut c = TestCluster::start_replicated("h", 2, 2, "[repair]\naae_interval_ms = 0\n").await;
    let client = c.client().await;
    let opts = RequestOptions::default();
    client.put_with("before", b"1", &opts).await.unwrap();

    let target = c.addrs[0];
    let mut hostile: Vec<TcpStream> = Vec::new();
    // A frame length far past the 16 MiB limit, and u64::MAX.
    for len in [u64::MAX, 1 << 40, (16 << 20) + 1] {
        let mut s = TcpStream::connect(target).unwrap();
        let _ = s.write_all(&len.to_be_bytes());
        let _ = s.write_all(&junk(4096, len as u32));
        hostile.push(s);
    }
    // Frames of the right shape holding garbage where protobuf belongs.
    for seed in 0..8u32 {
        let mut s = TcpStream::connect(target).unwrap();
        let body = junk(64 + seed as usize * 1000, seed);
        let _ = s.write_all(&(body.len() as u64).to_be_bytes());
        let _ = s.write_all(&body);
        hostile.push(s);
    }
    // Raw garbage with no framing at all.
    let mut s = TcpStream::connect(target).unwrap();
    let _ = s.write_all(&junk(256 << 10, 7));
    hostile.push(s);
    // A frame just under the limit that never finishes, and idle connections.
    let mut s = TcpStream::connect(target).unwrap();
    let _ = s.write_all(&((16u64 << 20) - 1).to_be_bytes());
    let _ = s.write_all(&junk(1 << 20, 9));
    hostile.push(s);
    for _ in 0..100 {
        hostile.push(TcpStream::connect(target).unwrap());
    }

    // Clients are served throughout, through the attacked node too.
    let started = Instant::now();
    for i in 0..50 {
        let key = format!("during-{i}");
        client
            .put_with(&key, b"v", &opts)
            .await
            .unwrap_or_else(|e| panic!("put {key} while under attack: {e}"));
    }
    let via = RequestOptions {
        via: Some(c.ids[0].clone()),
        ..RequestOptions::default()
    };
    assert_eq!(
        client.get_with("before", &via).await.unwrap().values,
        [b"1".to_vec()]
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "50 writes took {:?} under attack",
        started.elapsed()
    );
    drop(hostile);

    assert!(c.running(0));
    for i in 0..50 {
        let got = client.get_with(&format!("during-{i}"), &via).await.unwrap();
        assert_eq!(got.values, [b"v".to_vec()], "during-{i}");
    }
    let log = c.log(0);
    assert!(!log.contains("panicked"), "the node panicked:\n{log}");
    // Still a process of its own: it answers a clean shutdown.
    assert!(c.stop(0), "h1 exits cleanly after the attack");
}
