//! A vnode file destroyed on disk: the node moves it aside (kept, reported in status), serves
//! the partition again from an empty file, keeps serving every other partition, and
//! anti-entropy refills the partition from its replicas.

mod common;

use std::time::Duration;

use common::TestCluster;
use ringkv::{Client, RequestOptions};
use ringkv_actors::core::quorum::Consistency;
use ringkv_actors::core::ring::partition_of;
use ringkv_actors::protocol::VnodeHealth;

/// A 1 KB value, so a few thousand writes fill several commit log segments.
fn value(key: &str) -> Vec<u8> {
    key.bytes().cycle().take(1000).collect()
}

fn on(node: &str) -> RequestOptions {
    RequestOptions {
        r: Some(Consistency::One),
        via: Some(node.to_string()),
        ..Default::default()
    }
}

async fn present_on(client: &Client, node: &str, keys: &[String]) -> usize {
    let mut n = 0;
    for k in keys {
        if client.get_with(k, &on(node)).await.unwrap().found() {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destroyed_vnode_file_is_moved_aside_and_refilled_by_anti_entropy() {
    // Small log segments: older writes leave the commit log once checkpointed, so only the
    // replicas can give them back.
    let extra = "[storage]\nlog_segment_mb = 1\n[consistency]\nread_repair_chance = 0.0\n[repair]\naae_interval_ms = 0\n";
    let mut c = TestCluster::start_replicated("cr", 3, 3, extra).await;
    let client = c.client().await;
    let q = client.ring(&c.ids[0]).await.unwrap().partitions;
    let keys: Vec<String> = (0..2500).map(|i| format!("c{i}")).collect();
    for batch in keys.chunks(32) {
        let puts = batch.iter().map(|k| {
            let (client, k) = (client.clone(), k.clone());
            tokio::spawn(async move { client.put(&k, value(&k)).await.unwrap() })
        });
        for p in puts.collect::<Vec<_>>() {
            p.await.unwrap();
        }
    }
    let target = partition_of(keys[0].as_bytes(), q);
    let in_target: Vec<String> = keys
        .iter()
        .filter(|k| partition_of(k.as_bytes(), q) == target)
        .cloned()
        .collect();
    let elsewhere: Vec<String> = keys
        .iter()
        .filter(|k| partition_of(k.as_bytes(), q) != target)
        .cloned()
        .collect();

    assert!(c.stop(2), "clean stop");
    let file = c.node_dir(2).join(format!("vnode-{target}.redb"));
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&file, garbage).unwrap();
    c.spawn(2);
    c.wait_ready().await;

    let n3 = c.ids[2].clone();
    let status = client.node_status(&n3).await.unwrap();
    let v = status
        .vnodes
        .iter()
        .find(|v| v.partition == target)
        .unwrap();
    assert_eq!(v.health, VnodeHealth::Serving);
    assert_eq!(v.quarantined.len(), 1, "{v:?}");
    assert!(
        std::path::Path::new(&v.quarantined[0]).exists(),
        "the damaged file is kept"
    );
    assert_eq!(
        present_on(&client, &n3, &elsewhere).await,
        elsewhere.len(),
        "other partitions keep their data"
    );

    let restored = present_on(&client, &n3, &in_target).await;
    assert!(
        restored < in_target.len(),
        "premise: the commit log alone restored all {restored} keys"
    );
    for id in &c.ids {
        let round = client.aae_run(id, Duration::from_secs(120)).await.unwrap();
        assert!(round.errors.is_empty(), "{id}: {:?}", round.errors);
    }
    assert_eq!(
        present_on(&client, &n3, &in_target).await,
        in_target.len(),
        "anti-entropy refills the partition"
    );
    for k in &in_target {
        let r = client.get_with(k, &on(&n3)).await.unwrap();
        assert_eq!(r.values, vec![value(k)]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_replicas_a_damaged_file_is_left_in_place_and_its_partition_stopped() {
    let mut c = TestCluster::start("cs", 1, "").await;
    let client = c.client().await;
    let node = c.ids[0].clone();
    let q = client.ring(&node).await.unwrap().partitions;
    let keys: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    for k in &keys {
        client.put(k, k).await.unwrap();
    }
    let target = partition_of(keys[0].as_bytes(), q);
    assert!(c.stop(0), "clean stop");
    let file = c.node_dir(0).join(format!("vnode-{target}.redb"));
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, vec![0xA5; len]).unwrap();
    c.spawn(0);
    c.wait_ready().await;
    let status = client.node_status(&node).await.unwrap();
    let v = status
        .vnodes
        .iter()
        .find(|v| v.partition == target)
        .unwrap();
    assert_eq!(v.health, VnodeHealth::Failed, "{v:?}");
    assert!(v.quarantined.is_empty(), "nothing could refill it: {v:?}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().len() as usize,
        len,
        "file left in place"
    );
    for k in keys
        .iter()
        .filter(|k| partition_of(k.as_bytes(), q) != target)
    {
        assert_eq!(
            client.get(k).await.unwrap().values,
            vec![k.clone().into_bytes()]
        );
    }
}
