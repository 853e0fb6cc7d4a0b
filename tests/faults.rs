//! Fault tests: concurrent writers on overlapping keys (read, then write with the read's
//! context; some deletes) while a fault hits the cluster; then the fault heals, hints drain,
//! one anti-entropy round runs on every node, and the checker looks at the final state:
//! every acknowledged write present or superseded by a write that saw it, no deleted or
//! overwritten value back, nothing invented, and every replica of every partition with the
//! same merkle root. The negative control (last-write-wins blind writers, which the checker
//! must catch) is in `tests/checker.rs`.
//!
//! The fault tests run one at a time: each starts its own cluster, and several at once would
//! starve each other's failure detectors on a 2-core machine.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::checker::check;
use common::netfault::{self, Partition};
use common::workload::{self, Route, Run, WorkloadOptions};
use common::{TestCluster, wait_hints_drained};
use ringkv::Client;
use ringkv_actors::core::quorum::Consistency;
use tokio::sync::{Mutex, MutexGuard};

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// A fast detector, frequent handoff, no scheduled anti-entropy (the test runs one round).
const CONFIG: &str = "[node]\nheartbeat_ms = 100\nmissed_heartbeats = 3\n[repair]\nhandoff_interval_ms = 200\naae_interval_ms = 0\n";

fn options(c: &TestCluster, tag: &str) -> WorkloadOptions {
    WorkloadOptions {
        writers: 6,
        keys: 8,
        key_prefix: format!("{tag}-"),
        tag: tag.into(),
        duration: None,
        r: Some(Consistency::Quorum),
        w: Some(Consistency::Quorum),
        timeout: Some(Duration::from_secs(2)),
        route: Route::RoundRobin(c.ids.clone()),
        delete_share: 0.1,
        ..Default::default()
    }
}

/// Starts the workload; returns its handle once it has some acknowledged writes.
async fn start_load(client: &Client, opts: &WorkloadOptions) -> tokio::task::JoinHandle<Run> {
    let (client, o) = (client.clone(), opts.clone());
    let load = tokio::spawn(async move { workload::run(&client, &o).await });
    // A short warm-up with every node up, so the fault lands on keys with history.
    tokio::time::sleep(Duration::from_millis(300)).await;
    load
}

/// Per partition, whether every replica reports the same merkle root.
async fn roots_agree(client: &Client, ids: &[String], replicas: usize) -> bool {
    let mut roots: HashMap<u32, Vec<Option<u64>>> = HashMap::new();
    for id in ids {
        let Ok(view) = client.aae(id).await else {
            return false;
        };
        for p in view.partitions {
            roots.entry(p.partition).or_default().push(p.root);
        }
    }
    roots
        .values()
        .all(|r| r.len() == replicas && r.iter().all(|x| x.is_some() && *x == r[0]))
}

/// Heals: waits until every node answers and sees every other up and no hint waits, runs one
/// anti-entropy round per node, checks merkle roots and the workload's history. Returns the
/// time from the call to converged roots.
async fn converge_and_check(
    c: &mut TestCluster,
    client: &Client,
    run: Run,
    opts: &WorkloadOptions,
) -> Duration {
    let started = Instant::now();
    c.wait_ready().await;
    wait_hints_drained(client, &c.ids).await;
    for id in &c.ids {
        let round = client.aae_run(id, Duration::from_secs(120)).await.unwrap();
        assert!(round.errors.is_empty(), "{id}: {:?}", round.errors);
    }
    let replicas = client.ring(&c.ids[0]).await.unwrap().replicas;
    assert!(
        roots_agree(client, &c.ids, replicas).await,
        "replicas still differ after one anti-entropy round"
    );
    let converged = started.elapsed();
    let final_state =
        workload::read_final(client, &opts.key_names(), Duration::from_secs(30)).await;
    let report = check(&run.history, &final_state);
    eprintln!(
        "{}: {:?}; converged in {converged:?}; {report}",
        opts.tag, run.counts
    );
    assert!(report.is_ok(), "{report}");
    assert!(run.counts.acked > 20, "too little load: {:?}", run.counts);
    converged
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_and_restart() {
    let _one = serial().await;
    let mut c = TestCluster::start_replicated("fk", 3, 3, CONFIG).await;
    let client = c.client().await;
    let opts = options(&c, "fk");
    let load = start_load(&client, &opts).await;
    c.kill(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.spawn(1);
    c.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    opts.stop.store(true, Ordering::Relaxed);
    let run = load.await.unwrap();
    converge_and_check(&mut c, &client, run, &opts).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigstop_and_sigcont() {
    let _one = serial().await;
    let mut c = TestCluster::start_replicated("fs", 3, 3, CONFIG).await;
    let client = c.client().await;
    let opts = options(&c, "fs");
    let load = start_load(&client, &opts).await;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(c.pid(2) as libc::pid_t, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY: as above.
    unsafe { libc::kill(c.pid(2) as libc::pid_t, libc::SIGCONT) };
    tokio::time::sleep(Duration::from_millis(500)).await;
    opts.stop.store(true, Ordering::Relaxed);
    let run = load.await.unwrap();
    converge_and_check(&mut c, &client, run, &opts).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vnode_file_destroyed_under_load() {
    let _one = serial().await;
    let mut c = TestCluster::start_replicated("fv", 3, 3, CONFIG).await;
    let client = c.client().await;
    let opts = options(&c, "fv");
    let load = start_load(&client, &opts).await;
    c.kill(0);
    // Every vnode file of the node is destroyed (the keys may sit in any partition).
    for entry in std::fs::read_dir(c.node_dir(0)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "redb")
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vnode-"))
        {
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            std::fs::write(&path, vec![0xA5; len]).unwrap();
        }
    }
    c.spawn(0);
    c.wait_ready().await;
    let status = client.node_status(&c.ids[0]).await.unwrap();
    assert!(
        status.vnodes.iter().all(|v| v.quarantined.len() == 1),
        "every destroyed file is moved aside: {:?}",
        status.vnodes
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    opts.stop.store(true, Ordering::Relaxed);
    let run = load.await.unwrap();
    converge_and_check(&mut c, &client, run, &opts).await;
}

/// Five nodes on their own addresses; `groups` (node indices) cut from each other with iptables
/// for 2 s under the workload, then healed.
async fn partitioned(test: &str, prefix: &str, groups: &[&[usize]]) {
    let _one = serial().await;
    let Some(fw) = netfault::firewall_or_skip(test).await else {
        return;
    };
    let mut c = TestCluster::start_distinct(prefix, 5, 3, CONFIG).await;
    let client = c.client().await;
    let opts = options(&c, prefix);
    let load = start_load(&client, &opts).await;
    let addrs: Vec<Vec<_>> = groups
        .iter()
        .map(|g| g.iter().map(|&i| c.ip(i)).collect())
        .collect();
    let sides: Vec<&[_]> = addrs.iter().map(Vec::as_slice).collect();
    let cut = Partition::cut(&fw, &sides);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cut.heal();
    tokio::time::sleep(Duration::from_millis(500)).await;
    opts.stop.store(true, Ordering::Relaxed);
    let run = load.await.unwrap();
    converge_and_check(&mut c, &client, run, &opts).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_node_cut_off() {
    partitioned("one_node_cut_off", "fc", &[&[0, 1, 2, 3], &[4]]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_cut_in_two_halves() {
    partitioned("cluster_cut_in_two_halves", "fh", &[&[0, 1, 2], &[3, 4]]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn repair_switched_off_leaves_replicas_apart() {
    // Negative control for the convergence criterion: without anti-entropy, hints or read
    // repair, a replica that was down stays behind and the merkle roots say so.
    let _one = serial().await;
    let extra = "[node]\nheartbeat_ms = 100\nmissed_heartbeats = 3\n[consistency]\nread_repair_chance = 0.0\n[repair]\naae_interval_ms = 0\n";
    let mut c = TestCluster::start_replicated("fn", 3, 3, extra).await;
    let client = c.client().await;
    c.kill(2);
    let opts = WorkloadOptions {
        duration: Some(Duration::from_secs(1)),
        ..options(&c, "fn")
    };
    let opts = WorkloadOptions {
        route: Route::RoundRobin(c.ids[..2].to_vec()),
        ..opts
    };
    let run = workload::run(&client, &opts).await;
    assert!(run.counts.acked > 0, "{:?}", run.counts);
    c.spawn(2);
    c.wait_ready().await;
    let replicas = client.ring(&c.ids[0]).await.unwrap().replicas;
    assert!(
        !roots_agree(&client, &c.ids, replicas).await,
        "the convergence check must see a replica that missed writes"
    );
}
