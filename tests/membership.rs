//! Runtime membership with real node processes: growing and shrinking under load, transfers
//! that resume after their target or source is killed, refusals, and a join while a member is
//! down. Every node is a `ringkv node` process; changes go through the `ringkv cluster` CLI.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::checker::check;
use common::workload::{self, WorkloadOptions};
use common::{TestCluster, assert_success, describe, wait_until};
use ringkv::{Client, RequestOptions};
use ringkv_actors::core::quorum::Consistency;
use ringkv_actors::protocol::MembershipView;

/// Polls `f` every 20 ms until it yields a value; panics after `within`.
async fn poll<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Unthrottled transfers in small chunks, so every partition takes several; anti-entropy off,
/// so only the transfers can have moved the data.
const FAST: &str =
    "[membership]\nhandoff_mb_per_sec = 0\nchunk_keys = 64\n\n[repair]\naae_interval_ms = 0\n";

fn quorum() -> RequestOptions {
    RequestOptions {
        r: Some(Consistency::Quorum),
        w: Some(Consistency::Quorum),
        ..Default::default()
    }
}

/// Writes `keys` keys `<prefix><i>` = `v<i>`, 32 at a time.
async fn preload(client: &Client, prefix: &str, keys: usize, value_len: usize) {
    let pad = "x".repeat(value_len);
    for chunk in (0..keys).collect::<Vec<_>>().chunks(32) {
        let puts = chunk.iter().map(|i| {
            let (client, key, value) =
                (client.clone(), format!("{prefix}{i}"), format!("v{i}{pad}"));
            async move { client.put(&key, &value).await }
        });
        let tasks: Vec<_> = puts.map(tokio::spawn).collect();
        for t in tasks {
            t.await.unwrap().expect("preload write");
        }
    }
}

/// Every preloaded key reads back at r=all with its value.
async fn assert_preloaded(client: &Client, prefix: &str, keys: usize, value_len: usize) {
    let pad = "x".repeat(value_len);
    let all = RequestOptions {
        r: Some(Consistency::All),
        ..Default::default()
    };
    for i in 0..keys {
        let key = format!("{prefix}{i}");
        let read = client
            .get_with(&key, &all)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(
            read.values,
            vec![format!("v{i}{pad}").into_bytes()],
            "{key}"
        );
    }
}

fn cli_json(c: &TestCluster, args: &[&str]) -> MembershipView {
    let out = c.cli(args);
    assert_success(&out);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)))
}

/// Waits until every running node is at the same epoch, stable, with exactly `members`, and
/// sees every running member up.
async fn wait_stable(c: &TestCluster, client: &Client, members: &[&str], within: Duration) -> u64 {
    let running: Vec<String> = (0..c.ids.len())
        .filter(|&i| c.running(i))
        .map(|i| c.ids[i].clone())
        .collect();
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    poll("the ring to settle", within, || {
        let (client, running, members) = (client.clone(), running.clone(), members.clone());
        async move {
            let mut epochs = Vec::new();
            for id in &running {
                match client.node_status(id).await {
                    Ok(s) if s.stage == "stable" => epochs.push(s.ring_version),
                    _ => return None,
                }
            }
            // Every running node also sees every other one up, so quorums can form at once.
            for id in &running {
                let view = client.members(id).await.ok()?;
                let up = |r: &String| view.iter().any(|m| m.id == *r && m.up);
                if !running.iter().filter(|r| members.contains(r)).all(up) {
                    return None;
                }
            }
            let ring = client.ring(&running[0]).await.ok()?;
            let mut ids: Vec<String> = ring.members.iter().map(|m| m.id.clone()).collect();
            ids.sort_unstable();
            (epochs.iter().all(|&e| e == epochs[0]) && ids == members).then_some(epochs[0])
        }
    })
    .await
}

/// Runs an anti-entropy round everywhere, then checks that every replica of every partition
/// holds the same merkle root.
async fn assert_roots_equal(client: &Client, nodes: &[String]) {
    for n in nodes {
        client
            .aae_run(n, Duration::from_secs(60))
            .await
            .expect("aae round");
    }
    let ring = client.ring(&nodes[0]).await.unwrap();
    let mut roots: HashMap<(u32, String), Option<u64>> = HashMap::new();
    for n in nodes {
        for p in client.aae(n).await.unwrap().partitions {
            roots.insert((p.partition, n.clone()), p.root);
        }
    }
    for (p, prefs) in ring.preference_lists.iter().enumerate() {
        let mine: Vec<Option<u64>> = prefs
            .iter()
            .map(|n| roots.get(&(p as u32, n.clone())).copied().flatten())
            .collect();
        assert!(
            mine[0].is_some(),
            "partition {p} has no root on {}",
            prefs[0]
        );
        assert!(
            mine.iter().all(|r| *r == mine[0]),
            "partition {p}: roots differ across {prefs:?}: {mine:?}"
        );
    }
}

/// A sequential register: each write's value must be what the next quorum read returns.
async fn register(
    client: Client,
    stop: Arc<AtomicBool>,
    stale: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let Ok(read) = client.get_with("register", &quorum()).await else {
            continue;
        };
        let value = format!("r{n}");
        let opts = RequestOptions {
            context: Some(read.context.clone()),
            ..quorum()
        };
        if client.put_with("register", &value, &opts).await.is_err() {
            continue;
        }
        writes.fetch_add(1, Ordering::Relaxed);
        match client.get_with("register", &quorum()).await {
            Ok(r) if r.values.contains(&value.clone().into_bytes()) => {}
            Ok(r) => {
                let got: Vec<String> = r
                    .values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into())
                    .collect();
                eprintln!("stale read after {value}: {got:?}");
                stale.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_3_to_5_and_shrink_back_under_load_loses_nothing() {
    let mut c = TestCluster::start_replicated("mg", 3, 3, FAST).await;
    let client = c.client().await;
    preload(&client, "pre-", 1500, 100).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (stale, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reg = tokio::spawn(register(
        client.clone(),
        stop.clone(),
        stale.clone(),
        writes.clone(),
    ));
    let opts = WorkloadOptions {
        writers: 4,
        keys: 8,
        tag: "mg".into(),
        duration: None,
        stop: stop.clone(),
        r: Some(Consistency::Quorum),
        w: Some(Consistency::Quorum),
        delete_share: 0.2,
        ..Default::default()
    };
    let load = {
        let (client, opts) = (client.clone(), opts.clone());
        tokio::spawn(async move { workload::run(&client, &opts).await })
    };

    let i4 = c.spawn_joining("mg4", 0);
    let i5 = c.spawn_joining("mg5", 1);
    let all = c.client_all().await;
    for i in [i4, i5] {
        let id = c.ids[i].clone();
        wait_until(
            "the joining node to fetch the ring",
            Duration::from_secs(30),
            || {
                let (all, id) = (all.clone(), id.clone());
                async move { all.node_status(&id).await.is_ok_and(|s| s.ring_version > 0) }
            },
        )
        .await;
    }
    let (a4, a5) = (c.addrs[i4].to_string(), c.addrs[i5].to_string());
    cli_json(&c, &["cluster", "join", "mg4", &a4, "--json"]);
    cli_json(&c, &["cluster", "join", "mg5", &a5, "--json"]);
    let plan = cli_json(&c, &["cluster", "plan", "--json"]);
    assert_eq!(plan.plan_members, ["mg1", "mg2", "mg3", "mg4", "mg5"]);
    eprintln!(
        "3→5 plan: {} replicas move, ideal {}",
        plan.replicas_moved, plan.replicas_ideal
    );
    assert!(
        plan.replicas_moved as f64 <= plan.replicas_ideal as f64 * 1.1 + 1.0,
        "{plan:?}"
    );
    let hash = format!("{:016x}", plan.plan_hash);
    let committed = cli_json(&c, &["cluster", "commit", "--plan", &hash, "--json"]);
    assert!(committed.note.contains("committed"), "{committed:?}");
    let grown = wait_stable(
        &c,
        &all,
        &["mg1", "mg2", "mg3", "mg4", "mg5"],
        Duration::from_secs(120),
    )
    .await;
    assert!(
        grown >= committed.plan_epoch + 2,
        "settled at epoch {grown}"
    );

    // Shrink by two of the original members: a client configured with mg1..mg3 must go on.
    cli_json(&c, &["cluster", "leave", "mg1", "--json"]);
    cli_json(&c, &["cluster", "leave", "mg2", "--json"]);
    let plan = cli_json(&c, &["cluster", "plan", "--json"]);
    eprintln!(
        "5→3 plan: {} replicas move, ideal {}",
        plan.replicas_moved, plan.replicas_ideal
    );
    assert!(
        plan.replicas_moved as f64 <= plan.replicas_ideal as f64 * 1.1 + 1.0,
        "{plan:?}"
    );
    cli_json(&c, &["cluster", "commit", "--json"]);
    wait_stable(&c, &all, &["mg3", "mg4", "mg5"], Duration::from_secs(120)).await;

    stop.store(true, Ordering::Relaxed);
    let run = load.await.unwrap();
    reg.await.unwrap();
    eprintln!(
        "workload: {:?}; register writes {}",
        run.counts,
        writes.load(Ordering::Relaxed)
    );
    assert!(
        run.counts.acked > 20,
        "too few writes acknowledged: {:?}",
        run.counts
    );
    assert_eq!(
        stale.load(Ordering::Relaxed),
        0,
        "a quorum read missed the write before it"
    );

    // The old config's client (mg1..mg3, two of them gone) still reads and writes.
    let old = c.client().await;
    let learned = old.member_ids();
    assert!(
        ["mg4", "mg5"]
            .iter()
            .all(|m| learned.iter().any(|l| l == m)),
        "the client learned the members from the nodes: {learned:?}"
    );
    assert_preloaded(&old, "pre-", 1500, 100).await;
    old.put("after-shrink", "yes")
        .await
        .expect("write through the old config");
    let final_state = workload::read_final(&old, &opts.key_names(), Duration::from_secs(30)).await;
    let report = check(&run.history, &final_state);
    assert!(report.is_ok(), "{report}");
    let remaining: Vec<String> = ["mg3", "mg4", "mg5"].map(String::from).to_vec();
    assert_roots_equal(&all, &remaining).await;
    // The nodes that left released every partition: their files are moved aside.
    for i in [0, 1] {
        let live: Vec<String> = std::fs::read_dir(c.node_dir(i))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".redb") && n.starts_with("vnode-"))
            .collect();
        assert!(live.is_empty(), "{} still holds {live:?}", c.ids[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_resumes_after_its_source_and_then_its_target_is_killed() {
    // Slow enough to catch transfers mid-stream: 200 KB/s, one at a time, 16 KiB chunks.
    let extra = "[membership]\nhandoff_mb_per_sec = 0.2\nmax_inbound_per_node = 1\nchunk_keys = 32\nchunk_kb = 16\n\n[repair]\naae_interval_ms = 0\n";
    let mut c = TestCluster::start_replicated("mr", 3, 2, extra).await;
    let client = c.client().await;
    preload(&client, "k", 6000, 400).await;
    let t = c.spawn_joining("mr4", 0);
    let all = c.client_all().await;
    poll(
        "the joining node to fetch the ring",
        Duration::from_secs(30),
        || {
            let all = all.clone();
            async move {
                all.node_status("mr4")
                    .await
                    .is_ok_and(|s| s.ring_version > 0)
                    .then_some(())
            }
        },
    )
    .await;
    let addr = c.addrs[t].to_string();
    cli_json(&c, &["cluster", "join", "mr4", &addr, "--json"]);
    let committed = cli_json(&c, &["cluster", "commit", "--json"]);
    let moving = committed.moves.len();
    assert!(moving > 2, "{committed:?}");
    let streaming = |all: Client, not: Option<u32>| async move {
        all.transfers("mr4")
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|l| {
                l.state == "streaming"
                    && l.keys > 0
                    && l.keys + 64 < l.total_keys
                    && Some(l.partition) != not
            })
    };

    // Kill the source of a transfer part-way through: the target goes on from another replica.
    let first = poll(
        "a transfer part-way through",
        Duration::from_secs(60),
        || streaming(all.clone(), None),
    )
    .await;
    let src = c
        .ids
        .iter()
        .position(|id| *id == first.from)
        .expect("source is a node");
    c.kill(src);
    let switched = poll(
        "the transfer to switch source",
        Duration::from_secs(60),
        || {
            let (all, from) = (all.clone(), first.from.clone());
            async move {
                let lines = all.transfers("mr4").await.ok()?;
                lines.into_iter().find(|l| {
                    l.partition == first.partition && l.from != from && l.keys >= first.keys
                })
            }
        },
    )
    .await;
    eprintln!(
        "source {} killed at {} keys of partition {}; went on from {}",
        first.from, first.keys, first.partition, switched.from
    );
    c.spawn(src);

    // Kill the target part-way through another transfer: it resumes at its cursor.
    let before = poll(
        "another transfer part-way through",
        Duration::from_secs(60),
        || streaming(all.clone(), Some(first.partition)),
    )
    .await;
    c.kill(t);
    c.spawn(t);
    let all = c.client_all().await;
    wait_stable(
        &c,
        &all,
        &["mr1", "mr2", "mr3", "mr4"],
        Duration::from_secs(180),
    )
    .await;

    // Keys counted across restarts exceed the partitions' keys only by what was re-sent.
    let lines = all.transfers("mr4").await.unwrap();
    assert_eq!(lines.len(), moving, "{lines:?}");
    let mut resent_total = 0;
    for l in &lines {
        assert_eq!(l.state, "done", "{l:?}");
        let resent = l.keys.saturating_sub(l.total_keys);
        resent_total += resent;
        assert!(
            resent <= 2 * 32,
            "partition {} re-sent {resent} keys: {l:?}",
            l.partition
        );
    }
    let killed = lines
        .iter()
        .find(|l| l.partition == before.partition)
        .unwrap();
    eprintln!(
        "target killed at {} of {} keys of partition {}; {} keys re-sent in all",
        before.keys, before.total_keys, before.partition, resent_total
    );
    assert!(killed.keys >= killed.total_keys, "{killed:?}");
    assert_preloaded(&all, "k", 6000, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_are_refused_and_a_join_works_while_a_member_is_down() {
    let mut c = TestCluster::start_replicated("mx", 3, 3, FAST).await;
    let client = c.client().await;
    preload(&client, "d", 300, 50).await;

    let out = c.cli(&["cluster", "leave", "mx1"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fewer than the 3 replicas"),
        "{}",
        describe(&out)
    );
    let out = c.cli(&["cluster", "join", "b@d", "127.0.0.1:1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid"),
        "{}",
        describe(&out)
    );
    let out = c.cli(&["cluster", "join", "mx9", "not-an-address"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad address"),
        "{}",
        describe(&out)
    );
    let out = c.cli(&["cluster", "leave", "nobody"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a member"),
        "{}",
        describe(&out)
    );
    let out = c.cli(&["cluster", "commit"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing is staged"),
        "{}",
        describe(&out)
    );

    // A commit is refused once the plan changed since it was shown.
    let i4 = c.spawn_joining("mx4", 0);
    let a4 = c.addrs[i4].to_string();
    let shown = cli_json(&c, &["cluster", "join", "mx4", &a4, "--json"]);
    cli_json(&c, &["cluster", "join", "mx5", "127.0.0.1:9", "--json"]);
    let out = c.cli(&[
        "cluster",
        "commit",
        "--plan",
        &format!("{:016x}", shown.plan_hash),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plan changed"),
        "{}",
        describe(&out)
    );
    cli_json(&c, &["cluster", "clear", "--json"]);
    let status = c.cli(&["console", "-c", "status"]);
    assert_success(&status);

    // With mx3 down, a majority (mx1, mx2) still commits the join; mx3 catches up on return.
    c.kill(2);
    let all = c.client_all().await;
    cli_json(&c, &["cluster", "join", "mx4", &a4, "--json"]);
    cli_json(&c, &["cluster", "commit", "--json"]);
    let epoch = wait_stable(
        &c,
        &all,
        &["mx1", "mx2", "mx3", "mx4"],
        Duration::from_secs(120),
    )
    .await;
    c.spawn(2);
    let caught = wait_stable(
        &c,
        &all,
        &["mx1", "mx2", "mx3", "mx4"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(caught, epoch);
    assert_preloaded(&all, "d", 300, 50).await;
    let out = c.cli(&["cluster", "transfers"]);
    assert_success(&out);
}
