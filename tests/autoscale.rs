//! The autoscaler with real node processes: a load step grows a launched cluster through the
//! local provisioner and its end shrinks it back without losing a write; a failing `command`
//! provisioner leaves a clear error and no half-joined member, and the next claimant takes
//! over when the deciding node dies.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::checker::check;
use common::workload::{self, WorkloadOptions};
use common::{TestCluster, assert_success, bin, cli_with, free_port, wait_until};
use ringkv::{Client, ClientConfig};
use ringkv_actors::core::quorum::Consistency;
use ringkv_actors::protocol::{AutoscaleView, MembershipRequest};

/// Stops a launched cluster when the test ends, passed or not.
struct Launched {
    config: PathBuf,
    data: PathBuf,
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = cli_with(
            &self.config,
            &["cluster", "down", "--data-dir", self.data.to_str().unwrap()],
        );
    }
}

/// A `ringkv bench` process, killed when dropped.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn launched_ids(data: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(data.join("launcher.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The claimant's members once its ring is stable, else `None`.
async fn stable_members(client: &Client) -> Option<Vec<String>> {
    let v = client.membership(MembershipRequest::Show).await.ok()?;
    (v.stage == "stable" && v.staged.is_empty()).then_some(v.members)
}

async fn active_view(client: &Client) -> Option<AutoscaleView> {
    for id in client.member_ids() {
        if let Ok(v) = client.autoscale(&id).await
            && v.active
        {
            return Some(v);
        }
    }
    None
}

/// Requests per second the checker's two paced writers make at most, cluster-wide.
const PACED_OPS: u64 = 200;
/// Reads per second the bench starts, cluster-wide.
const BENCH_RATE: u64 = 900;

/// Waits up to `deadline` for the claimant's stable ring to have `size(members)`; on timeout
/// the panic shows what the autoscaler last read and decided, since that is why it did not act.
async fn wait_for_members(
    client: &Client,
    what: &str,
    deadline: Duration,
    size: impl Fn(usize) -> bool,
) {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if stable_members(client).await.is_some_and(|m| size(m.len())) {
            return;
        }
        if tokio::time::Instant::now() >= end {
            let view = active_view(client).await;
            let summary = view.map(|v| {
                let ops: Vec<_> = v
                    .signals
                    .iter()
                    .map(|s| format!("{} {:.0} ops/s", s.node, s.ops_per_sec))
                    .collect();
                let last: Vec<_> = v.decisions.iter().rev().take(4).collect();
                format!(
                    "{} at {:.2}x target, desired {} of {}; {ops:?}; last decisions {last:?}",
                    v.state, v.ratio, v.desired, v.members
                )
            });
            panic!("timed out waiting for {what}; autoscaler: {summary:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_step_grows_the_cluster_and_its_end_shrinks_it_back_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data) = (dir.path().join("cluster.toml"), dir.path().join("data"));
    // Only ops/s counts. Both loads are bounded by rate, not by how fast this machine runs
    // them: the checker makes at most PACED_OPS requests a second and the bench BENCH_RATE,
    // so the per-node target sits well above the first alone at 4 nodes and well below both
    // together at 3, while the bench's rate stays far below what a debug build sustains.
    let target = 150;
    assert!(PACED_OPS / 4 < target / 2 && (PACED_OPS + BENCH_RATE) / 3 > target * 2);
    std::fs::write(
        &config,
        format!(
            "[cluster]\ncookie = \"test-cookie\"\npartitions = 16\nreplicas = 3\n\n\
             [[members]]\nid = \"n1\"\naddr = \"127.0.0.1:7401\"\n\n\
             [[members]]\nid = \"n2\"\naddr = \"127.0.0.1:7402\"\n\n\
             [[members]]\nid = \"n3\"\naddr = \"127.0.0.1:7403\"\n\n\
             [membership]\nhandoff_mb_per_sec = 0\n\n[repair]\naae_interval_ms = 0\n\n\
             [autoscale]\nmin_nodes = 3\nmax_nodes = 4\ncpu_pct = 0\ndisk_pct = 0\n\
             ops_per_sec = {target}\ninterval_secs = 1\nsmoothing = 0.6\n\
             scale_out_after_secs = 3\nscale_in_after_secs = 6\ncooldown_secs = 2\n",
        ),
    )
    .unwrap();
    let port = free_port().to_string();
    let out = cli_with(
        &config,
        &[
            "cluster",
            "up",
            "--detach",
            "--autoscale",
            "--nodes",
            "3",
            "--base-port",
            &port,
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_success(&out);
    let launched = Launched {
        config: data.join("cluster.toml"),
        data: data.clone(),
    };
    let client = Client::connect(ClientConfig::from_file(&launched.config).unwrap())
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let opts = WorkloadOptions {
        writers: 2,
        keys: 8,
        tag: "as".into(),
        duration: None,
        stop: stop.clone(),
        r: Some(Consistency::Quorum),
        w: Some(Consistency::Quorum),
        delete_share: 0.2,
        // Each op is a read and a write: two requests per pace per writer.
        pace: Some(Duration::from_millis(1000 * 2 * 2 / PACED_OPS)),
        ..Default::default()
    };
    let checker = {
        let (client, opts) = (client.clone(), opts.clone());
        tokio::spawn(async move { workload::run(&client, &opts).await })
    };

    let bench = Command::new(bin())
        .arg("--config")
        .arg(&launched.config)
        .args([
            "bench",
            "--workload",
            "read",
            "--keys",
            "2000",
            "--concurrency",
            "32",
            "--rate",
            &BENCH_RATE.to_string(),
            "--duration",
            "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let load = Load(bench);
    wait_for_members(
        &client,
        "the load to add a node",
        Duration::from_secs(180),
        |n| n >= 4,
    )
    .await;
    let grown = stable_members(&client).await.unwrap();
    let added: Vec<String> = grown
        .iter()
        .filter(|m| !["n1", "n2", "n3"].contains(&m.as_str()))
        .cloned()
        .collect();
    assert!(!added.is_empty(), "{grown:?}");
    for id in &added {
        assert!(
            launched_ids(&data).contains(id),
            "{id} is in launcher.json for `cluster status` and `cluster down`"
        );
    }
    let first = added[0].clone();
    wait_until(
        "the new node to coordinate requests",
        Duration::from_secs(60),
        || {
            let (client, first) = (client.clone(), first.clone());
            async move {
                client
                    .stats(&first)
                    .await
                    .is_ok_and(|s| s.ops_per_sec > 0.0)
            }
        },
    )
    .await;
    let view = active_view(&client).await.expect("an autoscaler decides");
    let out = view
        .decisions
        .iter()
        .find(|d| d.action == "scale-out")
        .expect("a scale-out decision");
    assert!(out.result.contains("joined and serves"), "{out:?}");
    eprintln!("grew to {grown:?}: {}", out.result);

    drop(load);
    wait_for_members(
        &client,
        "the cluster to shrink back to 3",
        Duration::from_secs(240),
        |n| n == 3,
    )
    .await;
    wait_until(
        "the drained nodes to be stopped",
        Duration::from_secs(60),
        || {
            let data = data.clone();
            async move { launched_ids(&data).len() == 3 }
        },
    )
    .await;
    assert_eq!(
        stable_members(&client).await.unwrap(),
        ["n1", "n2", "n3"],
        "the nodes it added are the ones it removed"
    );
    let view = active_view(&client).await.expect("an autoscaler decides");
    let scale_in = view
        .decisions
        .iter()
        .filter(|d| d.action == "scale-in")
        .collect::<Vec<_>>();
    assert!(
        !scale_in.is_empty()
            && scale_in
                .iter()
                .all(|d| d.result.contains("drained and stopped")),
        "{scale_in:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let run = checker.await.unwrap();
    assert!(run.counts.acked > 20, "too few writes: {:?}", run.counts);
    let final_state =
        workload::read_final(&client, &opts.key_names(), Duration::from_secs(30)).await;
    let report = check(&run.history, &final_state);
    assert!(report.is_ok(), "{report}");
    eprintln!("checker: {:?}", run.counts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_provisioner_leaves_a_clear_error_and_no_member_behind() {
    let marks = tempfile::tempdir().unwrap();
    let (first, released) = (marks.path().join("first"), marks.path().join("released"));
    let ghost = format!("127.0.0.1:{}", free_port());
    // The first call fails outright; the second "starts" a node that never answers. A disk
    // use above 1% asks for a node at once, so neither waits on load.
    let extra = format!(
        "[autoscale]\nenabled = true\nprovisioner = \"command\"\nmin_nodes = 3\nmax_nodes = 4\n\
         interval_secs = 1\ncooldown_secs = 1\nstart_timeout_secs = 2\ndisk_emergency_pct = 1\n\n\
         [autoscale.command]\ntimeout_secs = 10\n\
         provision = '''if [ -e {first} ]; then echo '{{\"id\": \"af9\", \"addr\": \"{ghost}\"}}'; \
         else touch {first}; echo 'no capacity left in the pool' >&2; exit 7; fi'''\n\
         release = '''echo \"$RINGKV_NODE_ID\" >> {released}'''\n",
        first = first.display(),
        released = released.display(),
    );
    let mut c = TestCluster::start_replicated("af", 3, 3, &extra).await;
    let client = c.client().await;
    wait_until(
        "the unanswering node to be released",
        Duration::from_secs(60),
        || {
            let released = released.clone();
            async move {
                std::fs::read_to_string(&released).is_ok_and(|s| s.lines().any(|l| l == "af9"))
            }
        },
    )
    .await;
    let log = c.log(0);
    assert!(
        log.contains("provisioning failed: provision command exited with exit status: 7: no capacity left in the pool"),
        "the claimant logs the command's failure:\n{log}"
    );
    let view = client.autoscale("af1").await.unwrap();
    assert!(view.active, "{view:?}");
    let results: Vec<&str> = view.decisions.iter().map(|d| d.result.as_str()).collect();
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("failed: provisioning failed")),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r.contains("af9 did not answer") && r.contains("af9 released again")),
        "{results:?}"
    );
    assert_eq!(
        stable_members(&client).await,
        Some(["af1", "af2", "af3"].map(String::from).to_vec()),
        "nothing was staged or joined for the failed nodes"
    );
    let standby = client.autoscale("af2").await.unwrap();
    assert!(
        !standby.active && standby.state.contains("af1 decides"),
        "{standby:?}"
    );

    // The deciding node dies: the next claimant's autoscaler takes over.
    c.kill(0);
    wait_until(
        "af2's autoscaler to take over",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                client
                    .autoscale("af2")
                    .await
                    .is_ok_and(|v| v.active && !v.decisions.is_empty())
            }
        },
    )
    .await;
}
