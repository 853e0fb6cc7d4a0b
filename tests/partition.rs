//! Network partitions between real node processes, each on its own loopback address. The cuts
//! are iptables DROP rules (root only: without it these tests print SKIPPED and return).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::netfault::{self, Partition};
use common::{LoopbackBlock, TestCluster, wait_until};
use ringkv::{Client, KvError, RequestOptions};
use ringkv_actors::core::quorum::Consistency;

/// A fast detector: a cut-off peer is marked down about 300 ms after its last answer.
const FAST: &str = "[node]\nheartbeat_ms = 100\nmissed_heartbeats = 3\n";

fn level(r: Option<Consistency>, w: Option<Consistency>, node: &str) -> RequestOptions {
    RequestOptions {
        r,
        w,
        via: Some(node.to_string()),
        ..Default::default()
    }
}

/// Whether `observer` reports `member` as `up`.
async fn sees(client: &Client, observer: &str, member: &str, up: bool) -> bool {
    client
        .members(observer)
        .await
        .is_ok_and(|v| v.iter().any(|m| m.id == member && m.up == up))
}

/// Waits until `observer` reports `member` as `up`.
async fn wait_sees(client: &Client, observer: &str, member: &str, up: bool) {
    let state = if up { "up" } else { "down" };
    wait_until(
        &format!("{observer} to see {member} {state}"),
        Duration::from_secs(20),
        || sees(client, observer, member, up),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_cut_off_is_marked_down_the_majority_keeps_writing_and_heal_rejoins_it() {
    let test = "a_node_cut_off_is_marked_down_the_majority_keeps_writing_and_heal_rejoins_it";
    let Some(fw) = netfault::firewall_or_skip(test).await else {
        return;
    };
    let mut c = TestCluster::start_distinct("pa", 3, 3, FAST).await;
    let client = c.client().await;
    let (n1, n2, n3) = (c.ids[0].clone(), c.ids[1].clone(), c.ids[2].clone());
    let cut = Partition::cut(&fw, &[&[c.ip(0), c.ip(1)], &[c.ip(2)]]);
    assert_eq!(cut.rules(), 4, "two pairs, both directions");
    for observer in [&n1, &n2] {
        wait_sees(&client, observer, &n3, false).await;
    }
    for other in [&n1, &n2] {
        wait_sees(&client, &n3, other, false).await;
    }
    let quorum = Some(Consistency::Quorum);
    for (i, via) in [&n1, &n2].into_iter().enumerate() {
        client
            .put_with(format!("k{i}"), format!("v{i}"), &level(None, quorum, via))
            .await
            .unwrap_or_else(|e| panic!("quorum write through {via} during the partition: {e}"));
    }
    // The minority side knows it cannot reach a quorum and says so at once.
    let started = Instant::now();
    let err = client
        .put_with("lonely", "x", &level(None, quorum, &n3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, KvError::Unavailable { .. }),
        "a quorum write through the cut-off node: {err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused after {:?}",
        started.elapsed()
    );

    cut.heal();
    c.wait_ready().await;
    let all = Some(Consistency::All);
    for (i, via) in [&n1, &n3].into_iter().enumerate() {
        let r = client
            .get_with(format!("k{i}"), &level(all, None, via))
            .await
            .unwrap_or_else(|e| panic!("r=all read of k{i} through {via} after heal: {e}"));
        assert_eq!(r.values, vec![format!("v{i}").into_bytes()], "k{i}");
    }
    // Those reads repaired the node that missed the writes: it now answers alone.
    let one = Some(Consistency::One);
    wait_until(
        "the healed node to hold both writes",
        Duration::from_secs(20),
        || {
            let (client, n3) = (&client, &n3);
            async move {
                for i in 0..2 {
                    match client
                        .get_with(format!("k{i}"), &level(one, None, n3))
                        .await
                    {
                        Ok(r) if r.values == vec![format!("v{i}").into_bytes()] => {}
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
async fn cutting_two_nodes_apart_leaves_the_third_seeing_both() {
    let test = "cutting_two_nodes_apart_leaves_the_third_seeing_both";
    let Some(fw) = netfault::firewall_or_skip(test).await else {
        return;
    };
    let mut c = TestCluster::start_distinct("pc", 3, 3, FAST).await;
    let client = c.client().await;
    let (n1, n2, n3) = (c.ids[0].clone(), c.ids[1].clone(), c.ids[2].clone());
    // Only the 2 <-> 3 address pair is cut. Had the nodes dialled from one shared address
    // (127.0.0.1), no rule would match their links and 2 and 3 would stay connected.
    let cut = Partition::cut(&fw, &[&[c.ip(1)], &[c.ip(2)]]);
    wait_sees(&client, &n2, &n3, false).await;
    wait_sees(&client, &n3, &n2, false).await;
    // Node 1 must keep both for longer than the detector needs to mark a silent peer down.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(1000) {
        for member in [&n2, &n3] {
            assert!(
                sees(&client, &n1, member, true).await,
                "{n1} lost {member}, which only {n2} <-> {n3} were cut from"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both halves still reach a quorum through node 1.
    let quorum = Some(Consistency::Quorum);
    for via in [&n2, &n3] {
        client
            .put_with(format!("via-{via}"), "v", &level(None, quorum, via))
            .await
            .unwrap_or_else(|e| panic!("quorum write through {via}: {e}"));
    }
    cut.heal();
    c.wait_ready().await;
}

/// Established TCP connections (local, remote) from `/proc/net/tcp` (IPv4).
fn established() -> Vec<(SocketAddr, SocketAddr)> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let parse = |field: &str| -> SocketAddr {
        let (ip, port) = field.split_once(':').unwrap();
        // The kernel prints the address as the u32 in memory order.
        let ip = u32::from_str_radix(ip, 16).unwrap().to_ne_bytes();
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(ip)),
            u16::from_str_radix(port, 16).unwrap(),
        )
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 3 && f[3] == "01").then(|| (parse(f[1]), parse(f[2])))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_on_distinct_addresses_dial_from_their_own_address() {
    let c = TestCluster::start_distinct("pd", 3, 3, "").await;
    // Only the lower id of a pair dials: node i's link to node j (i < j) leaves from i's address.
    let links = |conns: &[(SocketAddr, SocketAddr)]| -> Vec<String> {
        let mut missing = Vec::new();
        for i in 0..3 {
            for j in i + 1..3 {
                if !conns
                    .iter()
                    .any(|(local, remote)| local.ip() == c.ip(i) && *remote == c.addrs[j])
                {
                    missing.push(format!("{} -> {}", c.ip(i), c.addrs[j]));
                }
            }
        }
        missing
    };
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let missing = links(&established());
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < end,
            "no established link from the dialling node's own address: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = c.client().await;
    client.put("k", "v").await.unwrap();
    assert_eq!(client.get("k").await.unwrap().values, vec![b"v".to_vec()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_removes_exactly_its_own_rules() {
    let test = "a_partition_removes_exactly_its_own_rules";
    let Some(fw) = netfault::firewall_or_skip(test).await else {
        return;
    };
    let block = LoopbackBlock::reserve();
    let ips: Vec<IpAddr> = (1..=4).map(|n| block.ip(n)).collect();
    let listeners: Vec<std::net::TcpListener> = ips
        .iter()
        .map(|&ip| std::net::TcpListener::bind((ip, 0)).unwrap())
        .collect();
    let at = |i: usize| listeners[i].local_addr().unwrap();
    let first = Partition::cut(&fw, &[&[ips[0]], &[ips[1]]]);
    let second = Partition::cut(&fw, &[&[ips[2]], &[ips[3]]]);
    assert_ne!(first.tag(), second.tag());
    assert!(netfault::blocked(ips[0], at(1)).await, "1 -> 2 cut");
    assert!(netfault::blocked(ips[1], at(0)).await, "2 -> 1 cut");
    assert!(netfault::blocked(ips[2], at(3)).await, "3 -> 4 cut");
    assert!(!netfault::blocked(ips[0], at(2)).await, "1 -> 3 in no cut");
    first.heal();
    assert!(!netfault::blocked(ips[0], at(1)).await, "1 -> 2 healed");
    assert!(
        netfault::blocked(ips[2], at(3)).await,
        "healing one partition left the other's rules"
    );
    drop(second);
    assert!(
        !netfault::blocked(ips[2], at(3)).await,
        "dropped partition healed"
    );
}
