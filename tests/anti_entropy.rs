//! Merkle anti-entropy with real node processes: a replica that missed writes and deletes
//! while it was down is refilled by exchanges alone (read repair off, no hints in a cluster of
//! exactly N nodes), and deleted keys stay deleted.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestCluster, wait_seen, wait_until};
use ringkv::{Client, RequestOptions};
use ringkv_actors::core::quorum::Consistency;

fn opts(r: Option<Consistency>, via: Option<&str>) -> RequestOptions {
    RequestOptions {
        r,
        via: via.map(str::to_string),
        ..Default::default()
    }
}

/// Per partition, the root hash each replica reports.
async fn roots(client: &Client, ids: &[String]) -> HashMap<u32, Vec<Option<u64>>> {
    let mut out: HashMap<u32, Vec<Option<u64>>> = HashMap::new();
    for id in ids {
        for p in client.aae(id).await.unwrap().partitions {
            out.entry(p.partition).or_default().push(p.root);
        }
    }
    out
}

fn all_equal(roots: &HashMap<u32, Vec<Option<u64>>>) -> bool {
    roots
        .values()
        .all(|r| r.len() == 3 && r.iter().all(|x| x.is_some() && *x == r[0]))
}

/// Writes keys and deletes some while node 2 is down; returns (kept, deleted).
async fn write_while_down(c: &mut TestCluster, client: &Client) -> (Vec<String>, Vec<String>) {
    c.kill(2);
    wait_seen(client, &c.ids[0], &c.ids[2], false).await;
    let mut kept = Vec::new();
    let mut deleted = Vec::new();
    for i in 0..300 {
        let k = format!("ae{i}");
        client.put(&k, format!("v{i}")).await.unwrap();
        if i % 10 == 0 {
            let ctx = client.get(&k).await.unwrap().context;
            let o = RequestOptions {
                context: Some(ctx),
                ..Default::default()
            };
            client.delete_with(&k, &o).await.unwrap();
            deleted.push(k);
        } else {
            kept.push(k);
        }
    }
    c.spawn(2);
    c.wait_ready().await;
    (kept, deleted)
}

async fn assert_node_has(client: &Client, node: &str, kept: &[String], deleted: &[String]) {
    for k in kept {
        let r = client
            .get_with(k, &opts(Some(Consistency::One), Some(node)))
            .await
            .unwrap_or_else(|e| panic!("{k} on {node}: {e}"));
        let i = &k[2..];
        assert_eq!(
            r.values,
            vec![format!("v{i}").into_bytes()],
            "{k} on {node}"
        );
    }
    for k in deleted {
        let r = client
            .get_with(k, &opts(Some(Consistency::One), Some(node)))
            .await
            .unwrap_or_else(|e| panic!("{k} on {node}: {e}"));
        assert!(!r.found(), "deleted {k} readable on {node}: {:?}", r.values);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_round_refills_a_replica_that_missed_writes_and_deletes() {
    let extra = "[consistency]\nread_repair_chance = 0.0\n[repair]\naae_interval_ms = 0\n";
    let mut c = TestCluster::start_replicated("ae", 3, 3, extra).await;
    let client = c.client().await;
    let (kept, deleted) = write_while_down(&mut c, &client).await;
    let before = roots(&client, &c.ids).await;
    assert!(!all_equal(&before), "the restarted replica should differ");

    let mut repaired = 0;
    for id in &c.ids {
        let round = client.aae_run(id, Duration::from_secs(120)).await.unwrap();
        assert!(round.errors.is_empty(), "{id}: {:?}", round.errors);
        repaired += round.keys_repaired;
    }
    assert!(
        repaired >= (kept.len() + deleted.len()) as u64,
        "repaired {repaired} keys"
    );
    let after = roots(&client, &c.ids).await;
    assert!(all_equal(&after), "roots still differ: {after:?}");
    let n3 = c.ids[2].clone();
    assert_node_has(&client, &n3, &kept, &deleted).await;
    // A second round finds nothing left to repair.
    for id in &c.ids {
        let round = client.aae_run(id, Duration::from_secs(120)).await.unwrap();
        assert_eq!(round.keys_repaired, 0, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_converges_replicas_on_its_own() {
    let extra = "[consistency]\nread_repair_chance = 0.0\n[repair]\naae_interval_ms = 1000\n";
    let mut c = TestCluster::start_replicated("as", 3, 3, extra).await;
    let client = c.client().await;
    let (kept, deleted) = write_while_down(&mut c, &client).await;
    let (cl, ids) = (client.clone(), c.ids.clone());
    wait_until(
        "every replica's merkle root to agree",
        Duration::from_secs(60),
        move || {
            let (cl, ids) = (cl.clone(), ids.clone());
            async move { all_equal(&roots(&cl, &ids).await) }
        },
    )
    .await;
    let n3 = c.ids[2].clone();
    assert_node_has(&client, &n3, &kept, &deleted).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tombstones_are_reaped_only_once_every_replica_has_them() {
    let extra = "[consistency]\nread_repair_chance = 0.0\n[repair]\naae_interval_ms = 0\ntombstone_grace_secs = 0\n";
    let mut c = TestCluster::start_replicated("ar", 3, 3, extra).await;
    let client = c.client().await;
    let all = RequestOptions {
        w: Some(Consistency::All),
        ..Default::default()
    };
    let keys: Vec<String> = (0..50).map(|i| format!("t{i}")).collect();
    for k in &keys {
        client.put_with(k, "old", &all).await.unwrap();
    }
    // n3 keeps the old values while the others delete them.
    c.kill(2);
    wait_seen(&client, &c.ids[0], &c.ids[2], false).await;
    for k in &keys {
        let ctx = client.get(k).await.unwrap().context;
        let o = RequestOptions {
            context: Some(ctx),
            ..Default::default()
        };
        client.delete_with(k, &o).await.unwrap();
    }
    for id in &c.ids[..2] {
        let round = client.aae_run(id, Duration::from_secs(120)).await.unwrap();
        assert_eq!(
            round.tombstones_reaped, 0,
            "{id} reaped with a replica down"
        );
    }

    c.spawn(2);
    c.wait_ready().await;
    // The first round repairs n3 and sees every replica agree; the second reaps (a tombstone
    // is reaped only when an earlier round saw the same agreement).
    let mut reaped = Vec::new();
    for _ in 0..2 {
        let mut n = 0;
        for id in &c.ids {
            let round = client.aae_run(id, Duration::from_secs(120)).await.unwrap();
            assert!(round.errors.is_empty(), "{id}: {:?}", round.errors);
            n += round.tombstones_reaped;
        }
        reaped.push(n);
    }
    assert_eq!(
        reaped,
        vec![0, keys.len() as u64],
        "tombstones reaped per round"
    );
    for k in &keys {
        let r = client
            .get_with(k, &opts(Some(Consistency::All), None))
            .await
            .unwrap();
        assert!(!r.found(), "{k} came back: {:?}", r.values);
    }
    let after = roots(&client, &c.ids).await;
    assert!(all_equal(&after), "roots differ after reaping: {after:?}");
    for id in &c.ids {
        let round = client.aae_run(id, Duration::from_secs(120)).await.unwrap();
        assert_eq!(
            (round.keys_repaired, round.tombstones_reaped),
            (0, 0),
            "{id}"
        );
    }
}
