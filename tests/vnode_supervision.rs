//! A vnode that fails is restarted by its supervisor, replays its writes and serves again;
//! one that keeps failing is stopped by the budget while other partitions keep serving.

mod common;

use std::time::Duration;

use common::{TestCluster, wait_until};
use ringkv::{Client, KvError};
use ringkv_actors::core::ring::partition_of;
use ringkv_actors::protocol::VnodeHealth;

const Q: u32 = 16;

/// Keys that land on `partition`.
fn keys_in(partition: u32, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| partition_of(k.as_bytes(), Q) == partition)
        .take(n)
        .collect()
}

async fn health(client: &Client, node: &str, partition: u32) -> (VnodeHealth, u32) {
    let status = client.node_status(node).await.unwrap();
    let v = status
        .vnodes
        .iter()
        .find(|v| v.partition == partition)
        .unwrap();
    (v.health, v.restarts)
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_vnode_restarts_and_keeps_its_data() {
    let c = TestCluster::start("sup", 1, "").await;
    let node = c.ids[0].clone();
    let client = c.client().await;
    let keys = keys_in(5, 300);
    for k in &keys {
        client.put(k, k).await.unwrap();
    }
    client.crash_vnode(&node, 5).await.unwrap();
    wait_until(
        "partition 5 restarted and serving",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let node = node.clone();
            async move { health(&client, &node, 5).await == (VnodeHealth::Serving, 1) }
        },
    )
    .await;
    for k in &keys {
        assert_eq!(
            client.get(k).await.unwrap().value(),
            Some(k.as_bytes()),
            "{k} survived the restart"
        );
    }
    client.put(&keys[0], "after").await.unwrap();
    assert_eq!(
        client.get(&keys[0]).await.unwrap().value(),
        Some(&b"after"[..])
    );
    let others = client.node_status(&node).await.unwrap();
    assert!(
        others
            .vnodes
            .iter()
            .filter(|v| v.partition != 5)
            .all(|v| v.restarts == 0 && v.health == VnodeHealth::Serving)
    );
    assert!(c.log(0).contains("vnode stopped; restarting"));
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_budget_stops_a_crash_loop() {
    let c = TestCluster::start(
        "bud",
        1,
        "[node]\nvnode_max_restarts = 2\nvnode_restart_window_secs = 600\n",
    )
    .await;
    let node = c.ids[0].clone();
    let client = c.client().await;
    let victim = keys_in(3, 1).remove(0);
    let bystander = keys_in(4, 1).remove(0);
    client.put(&bystander, "fine").await.unwrap();
    for round in 1..=3u32 {
        client.crash_vnode(&node, 3).await.unwrap();
        let want = if round <= 2 {
            (VnodeHealth::Serving, round)
        } else {
            (VnodeHealth::Failed, 2)
        };
        wait_until(
            &format!("partition 3 after crash {round}"),
            Duration::from_secs(30),
            || {
                let client = client.clone();
                let node = node.clone();
                async move { health(&client, &node, 3).await == want }
            },
        )
        .await;
    }
    assert_eq!(
        client.put(&victim, "x").await.unwrap_err(),
        KvError::Unavailable { needed: 1, got: 0 }
    );
    assert_eq!(
        client.get(&bystander).await.unwrap().value(),
        Some(&b"fine"[..])
    );
    assert!(c.log(0).contains("exceeded its restart budget"));
}
