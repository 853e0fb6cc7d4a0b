//! Sloppy quorum and hinted handoff, with real node processes: five nodes, three replicas per
//! key, so every partition has fallbacks outside its preference list.

mod common;

use std::time::Duration;

use common::{TestCluster, wait_hints_drained, wait_until};
use ringkv::{Client, KvError, RequestOptions};
use ringkv_actors::core::quorum::Consistency;
use ringkv_actors::core::ring::partition_of;

/// Keys have no siblings here, read repair is off (so only handoff can fill the restarted
/// node) and hints are offered back often.
const FAST_HANDOFF: &str =
    "[consistency]\nread_repair_chance = 0.0\n[repair]\nhandoff_interval_ms = 100\n";

fn opts(r: Option<Consistency>, w: Option<Consistency>, via: Option<&str>) -> RequestOptions {
    RequestOptions {
        r,
        w,
        via: via.map(str::to_string),
        ..Default::default()
    }
}

/// Keys among `k0..k{n}` whose preference list includes `node`.
async fn keys_replicated_by(client: &Client, any: &str, node: &str, n: usize) -> Vec<String> {
    let ring = client.ring(any).await.unwrap();
    (0..n)
        .map(|i| format!("k{i}"))
        .filter(|k| {
            let p = partition_of(k.as_bytes(), ring.partitions);
            ring.preference_lists[p as usize].iter().any(|m| m == node)
        })
        .collect()
}

async fn hints_waiting(client: &Client, c: &TestCluster, skip: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, id) in c.ids.iter().enumerate() {
        if i == skip {
            out.push(0);
            continue;
        }
        out.push(client.node_status(id).await.unwrap().hints_waiting);
    }
    out
}

async fn wait_marked(client: &Client, c: &TestCluster, node: usize, up: bool) {
    let target = c.ids[node].clone();
    for (i, id) in c.ids.iter().enumerate() {
        if i == node {
            continue;
        }
        let (client, id, target) = (client.clone(), id.clone(), target.clone());
        wait_until(
            &format!("{id} to see {target} up={up}"),
            Duration::from_secs(20),
            move || {
                let (client, id, target) = (client.clone(), id.clone(), target.clone());
                async move {
                    client
                        .members(&id)
                        .await
                        .is_ok_and(|m| m.iter().any(|v| v.id == target && v.up == up))
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_for_a_down_replica_become_hints_that_survive_restarts_and_are_handed_back() {
    let mut c = TestCluster::start_replicated("ho", 5, 3, FAST_HANDOFF).await;
    let client = c.client().await;
    let down = 4;
    let keys = keys_replicated_by(&client, &c.ids[0], &c.ids[down], 120).await;
    assert!(keys.len() > 20, "only {} keys on the node", keys.len());
    c.kill(down);
    wait_marked(&client, &c, down, false).await;

    // w=all counts the fallback that keeps the down replica's hint.
    for k in &keys {
        client
            .put_with(
                k,
                format!("v-{k}"),
                &opts(None, Some(Consistency::All), None),
            )
            .await
            .unwrap_or_else(|e| panic!("{k}: {e}"));
    }
    let waiting = hints_waiting(&client, &c, down).await;
    assert_eq!(
        waiting.iter().sum::<u64>(),
        keys.len() as u64,
        "one hint per key: {waiting:?}"
    );

    // Hints are durable: a fallback restarted while the owner is still down keeps them.
    let holder = (0..c.ids.len()).max_by_key(|&i| waiting[i]).unwrap();
    c.kill(holder);
    c.spawn(holder);
    let (cl, id) = (client.clone(), c.ids[holder].clone());
    let expect = waiting[holder];
    wait_until(
        "the restarted fallback to report its hints",
        Duration::from_secs(30),
        move || {
            let (cl, id) = (cl.clone(), id.clone());
            async move {
                cl.node_status(&id)
                    .await
                    .is_ok_and(|s| s.hints_waiting == expect)
            }
        },
    )
    .await;

    c.spawn(down);
    wait_marked(&client, &c, down, true).await;
    wait_hints_drained(&client, &c.ids).await;
    // The owner answers alone (r=one through itself reads its own copy first).
    let me = c.ids[down].clone();
    for k in &keys {
        let r = client
            .get_with(k, &opts(Some(Consistency::One), None, Some(&me)))
            .await
            .unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(r.values, vec![format!("v-{k}").into_bytes()], "{k} on {me}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_quorum_does_not_count_fallbacks() {
    let extra = format!("{FAST_HANDOFF}\n")
        .replace("[consistency]\n", "[consistency]\nsloppy_quorum = false\n");
    let mut c = TestCluster::start_replicated("hs", 5, 3, &extra).await;
    let client = c.client().await;
    let down = 4;
    let keys = keys_replicated_by(&client, &c.ids[0], &c.ids[down], 60).await;
    c.kill(down);
    wait_marked(&client, &c, down, false).await;
    let r = client
        .put_with(&keys[0], "v", &opts(None, Some(Consistency::All), None))
        .await;
    assert!(
        matches!(r, Err(KvError::Unavailable { needed: 3, got: 2 })),
        "{r:?}"
    );
    client
        .put_with(&keys[0], "v", &opts(None, Some(Consistency::Quorum), None))
        .await
        .unwrap();
    assert_eq!(
        hints_waiting(&client, &c, down).await.iter().sum::<u64>(),
        0
    );
}
