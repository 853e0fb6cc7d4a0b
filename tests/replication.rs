//! Three real node processes replicating every key three times: quorums, failures, siblings.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestCluster, wait_until};
use ringkv::{Client, Context, KvError, RequestOptions};
use ringkv_actors::core::quorum::Consistency;

fn via(node: &str) -> RequestOptions {
    RequestOptions {
        via: Some(node.to_string()),
        ..Default::default()
    }
}

fn level(r: Option<Consistency>, w: Option<Consistency>, node: Option<&str>) -> RequestOptions {
    RequestOptions {
        r,
        w,
        via: node.map(str::to_string),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn quorum_writes_are_read_back_through_every_node() {
    let c = TestCluster::start_replicated("rq", 3, 3, "").await;
    let client = c.client().await;
    let quorum = Some(Consistency::Quorum);
    for i in 0..150 {
        let node = &c.ids[i % 3];
        client
            .put_with(
                format!("k{i}"),
                format!("v{i}"),
                &level(None, quorum, Some(node)),
            )
            .await
            .unwrap();
    }
    for node in &c.ids {
        for i in 0..150 {
            let r = client
                .get_with(format!("k{i}"), &level(quorum, None, Some(node)))
                .await
                .unwrap();
            assert_eq!(
                r.values,
                vec![format!("v{i}").into_bytes()],
                "k{i} through {node}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn write_all_with_a_node_down_fails_promptly() {
    let mut c = TestCluster::start_replicated("ra", 3, 3, "").await;
    let client = c.client().await;
    client.put("k", "v").await.unwrap();
    c.kill(2);
    let (n1, n3) = (c.ids[0].clone(), c.ids[2].clone());
    wait_until("n1 to see n3 down", Duration::from_secs(10), || {
        let (client, n1, n3) = (client.clone(), n1.clone(), n3.clone());
        async move {
            client
                .members(&n1)
                .await
                .is_ok_and(|v| v.iter().any(|m| m.id == n3 && !m.up))
        }
    })
    .await;
    let started = Instant::now();
    let err = client
        .put_with("k", "w", &level(None, Some(Consistency::All), Some(&n1)))
        .await
        .unwrap_err();
    assert_eq!(err, KvError::Unavailable { needed: 3, got: 2 });
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "failed fast: {:?}",
        started.elapsed()
    );
    let err = client
        .get_with("k", &level(Some(Consistency::All), None, Some(&n1)))
        .await
        .unwrap_err();
    assert_eq!(err, KvError::Unavailable { needed: 3, got: 2 });
    client
        .put_with("k", "q", &level(None, Some(Consistency::Quorum), None))
        .await
        .unwrap();
    assert_eq!(client.get("k").await.unwrap().values, vec![b"q".to_vec()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_through_different_nodes_become_siblings() {
    let c = TestCluster::start_replicated("rs", 3, 3, "").await;
    let client = c.client().await;
    let all = Some(Consistency::All);
    client.put("doc", "base").await.unwrap();
    let base = client
        .get_with("doc", &level(all, None, None))
        .await
        .unwrap()
        .context;
    let a = RequestOptions {
        context: Some(base.clone()),
        ..via(&c.ids[0])
    };
    let b = RequestOptions {
        context: Some(base),
        ..via(&c.ids[1])
    };
    let (ra, rb) = tokio::join!(
        client.put_with("doc", "from-1", &a),
        client.put_with("doc", "from-2", &b)
    );
    ra.unwrap();
    rb.unwrap();
    let read = client
        .get_with("doc", &level(all, None, None))
        .await
        .unwrap();
    let mut vals = read.values.clone();
    vals.sort();
    assert_eq!(vals, vec![b"from-1".to_vec(), b"from-2".to_vec()]);
    let resolve = RequestOptions {
        context: Some(read.context),
        ..via(&c.ids[2])
    };
    client.put_with("doc", "merged", &resolve).await.unwrap();
    for node in &c.ids {
        let r = client
            .get_with("doc", &level(all, None, Some(node)))
            .await
            .unwrap();
        assert_eq!(r.values, vec![b"merged".to_vec()], "through {node}");
    }
    // A sequential writer passing the context of its last write, through a different node each
    // time and at the default quorum, never produces siblings.
    let mut ctx: Context = client.get("doc").await.unwrap().context;
    for i in 0..30 {
        let opts = RequestOptions {
            context: Some(ctx),
            ..via(&c.ids[i % 3])
        };
        ctx = client
            .put_with("doc", format!("s{i}"), &opts)
            .await
            .unwrap();
        let r = client
            .get_with("doc", &level(all, None, None))
            .await
            .unwrap();
        assert_eq!(r.values, vec![format!("s{i}").into_bytes()], "write {i}");
    }
}

/// Writers of unique keys at quorum, recording each acknowledged key and every error.
async fn write_load(
    client: Client,
    writers: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> (Vec<String>, Vec<String>) {
    let log = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, stop, acked, log) = (client.clone(), stop.clone(), acked.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                let opts = level(None, Some(Consistency::Quorum), None);
                match client.put_with(&key, &key, &opts).await {
                    Ok(_) => {
                        log.lock().unwrap().0.push(key);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => log.lock().unwrap().1.push(format!("{key}: {e}")),
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(log).unwrap().into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_write_load_keeps_quorum_and_read_repair_heals() {
    let mut c = TestCluster::start_replicated("rk", 3, 3, "").await;
    let client = c.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(write_load(client.clone(), 8, stop.clone(), acked.clone()));
    let at = |n: usize| {
        let acked = acked.clone();
        move || {
            let acked = acked.clone();
            async move { acked.load(Ordering::Relaxed) >= n }
        }
    };
    wait_until(
        "500 writes before the kill",
        Duration::from_secs(60),
        at(500),
    )
    .await;
    c.kill(2);
    let before = acked.load(Ordering::Relaxed);
    wait_until(
        "1000 more writes after the kill",
        Duration::from_secs(60),
        at(before + 1000),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (written, errors) = load.await.unwrap();
    // Only requests caught in flight by the kill may fail; the SDK retries those it can.
    assert!(
        errors.len() <= 8,
        "{} errors at quorum: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    for key in &written {
        let r = client
            .get_with(key, &level(Some(Consistency::Quorum), None, None))
            .await
            .unwrap();
        assert_eq!(r.values, vec![key.clone().into_bytes()], "{key} lost");
    }

    c.spawn(2);
    c.wait_ready().await;
    let n3 = c.ids[2].clone();
    // Reads through the restarted node return current data and repair its stale copies.
    for key in &written {
        let r = client
            .get_with(key, &level(Some(Consistency::Quorum), None, Some(&n3)))
            .await
            .unwrap();
        assert_eq!(
            r.values,
            vec![key.clone().into_bytes()],
            "{key} through the restarted node"
        );
    }
    let one = level(Some(Consistency::One), None, Some(&n3));
    wait_until(
        "read repair to reach the restarted node",
        Duration::from_secs(30),
        || {
            let (client, written, one) = (client.clone(), written.clone(), one.clone());
            async move {
                for key in &written {
                    match client.get_with(key, &one).await {
                        Ok(r) if r.values == vec![key.clone().into_bytes()] => {}
                        _ => return false,
                    }
                }
                true
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_refused_not_queued() {
    let c = TestCluster::start_replicated("ro", 3, 3, "[node]\nmax_coordinating = 1\n").await;
    let client = c.client().await;
    let node = c.ids[0].clone();
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let (client, node) = (client.clone(), node.clone());
            tokio::spawn(
                async move { (i, client.put_with(format!("o{i}"), "v", &via(&node)).await) },
            )
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    // Reads only once every write is answered: each node coordinates one request at a time.
    let mut overloaded = 0;
    for (i, r) in results {
        match r {
            Ok(_) => assert_eq!(
                client.get(format!("o{i}")).await.unwrap().values,
                vec![b"v".to_vec()]
            ),
            Err(KvError::Overloaded) => overloaded += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(
        overloaded > 0,
        "48 concurrent writes through a node allowed to coordinate one at a time"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_that_do_not_replicate_a_key_forward_and_coordinate_it() {
    // Five nodes, three replicas per key: two nodes of every partition are not replicas, so a
    // write sent to them is forwarded and a read is coordinated remotely.
    let c = TestCluster::start_replicated("rf", 5, 3, "").await;
    let client = c.client().await;
    let ring = client.ring(&c.ids[0]).await.unwrap();
    let all = Some(Consistency::All);
    let mut forwarded = 0;
    for (i, node) in c.ids.iter().cycle().take(40).enumerate() {
        let key = format!("f{i}");
        let partition = ringkv_actors::core::ring::partition_of(key.as_bytes(), ring.partitions);
        if !ring.preference_lists[partition as usize].contains(node) {
            forwarded += 1;
        }
        client
            .put_with(&key, node, &level(None, all, Some(node)))
            .await
            .unwrap();
        for reader in &c.ids {
            let r = client
                .get_with(&key, &level(all, None, Some(reader)))
                .await
                .unwrap();
            assert_eq!(
                r.values,
                vec![node.clone().into_bytes()],
                "{key} read through {reader}"
            );
        }
    }
    assert!(forwarded > 0, "some writes went through non-replicas");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_node_is_marked_down_by_missed_heartbeats_and_rejoins() {
    let c = TestCluster::start_replicated(
        "rh",
        3,
        3,
        "[node]\nheartbeat_ms = 100\nmissed_heartbeats = 3\n",
    )
    .await;
    let client = c.client().await;
    let (n1, n3) = (c.ids[0].clone(), c.ids[2].clone());
    let sees = |up: bool| {
        let (client, n1, n3) = (client.clone(), n1.clone(), n3.clone());
        move || {
            let (client, n1, n3) = (client.clone(), n1.clone(), n3.clone());
            async move {
                client
                    .members(&n1)
                    .await
                    .is_ok_and(|v| v.iter().any(|m| m.id == n3 && m.up == up))
            }
        }
    };
    // SIGSTOP keeps the TCP session open: only missed heartbeats can reveal it.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(c.pid(2) as libc::pid_t, libc::SIGSTOP) };
    let stopped = Instant::now();
    wait_until(
        "n1 to mark the hung node down",
        Duration::from_secs(10),
        sees(false),
    )
    .await;
    let detected = stopped.elapsed();
    assert!(
        detected < Duration::from_secs(2),
        "detected after {detected:?}"
    );
    let started = Instant::now();
    client
        .put_with("k", "v", &level(None, Some(Consistency::Quorum), Some(&n1)))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the write did not wait for the hung node"
    );
    // SAFETY: as above.
    unsafe { libc::kill(c.pid(2) as libc::pid_t, libc::SIGCONT) };
    wait_until(
        "n1 to see the node up again",
        Duration::from_secs(15),
        sees(true),
    )
    .await;
    let r = client
        .get_with("k", &level(Some(Consistency::All), None, Some(&n1)))
        .await
        .unwrap();
    assert_eq!(r.values, vec![b"v".to_vec()]);
}
