//! `ringkv cluster add | remove`: grow or shrink a launched cluster by one node while it
//! serves. `add` starts a node that joins through a running member, stages its join and
//! commits it; `remove` stages a leave, waits until the node handed off every partition and
//! hint, then stops it. Both print progress until the ring is stable again.

use std::path::Path;
use std::time::{Duration, Instant};

use ringkv_actors::core::placement::Change;
use ringkv_actors::protocol::MembershipView;

use super::{
    LaunchedNode, add_launched, pid_alive, read_state, spawn_node, stop_pids, tail, write_state,
};
use crate::client::{Client, ClientConfig};

/// Longest a change may take to become stable before `add`/`remove` give up waiting (the
/// change itself goes on; `ringkv cluster transfers` follows it).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1800);

async fn connect(dir: &Path) -> Result<(Client, super::LauncherState), String> {
    let state = read_state(dir)?;
    let mut cc = ClientConfig::from_file(&state.config).map_err(|e| e.to_string())?;
    add_launched(&mut cc, &state);
    cc.connect_timeout = Duration::from_secs(2);
    let client = Client::connect(cc).await.map_err(|e| e.to_string())?;
    Ok((client, state))
}

/// One progress line: the change's stage and what every streaming node reports.
async fn progress(client: &Client, nodes: &[String]) -> Option<(MembershipView, String)> {
    let view = client
        .membership(ringkv_actors::protocol::MembershipRequest::Show)
        .await
        .ok()?;
    let (mut done, mut moving, mut bytes, mut rate) = (0usize, 0usize, 0u64, 0f64);
    let mut stalls = Vec::new();
    for n in nodes {
        for t in client.transfers(n).await.unwrap_or_default() {
            moving += 1;
            done += usize::from(t.state == "done");
            bytes += t.bytes;
            if t.state == "streaming" {
                rate += t.rate;
            }
            if t.state == "stalled" || (t.state == "waiting" && !t.why.is_empty()) {
                stalls.push(format!("p{} {}: {}", t.partition, t.state, t.why));
            }
        }
    }
    let mut line = format!(
        "epoch {} {}: {done}/{moving} partitions streamed in, {:.1} MB, {:.1} MB/s",
        view.epoch,
        view.stage,
        bytes as f64 / 1e6,
        rate / 1e6
    );
    if let Some(s) = stalls.first() {
        line.push_str(&format!(" ({} waiting; first: {s})", stalls.len()));
    }
    Some((view, line))
}

/// Prints progress every second until the ring is stable at an epoch after `committed` and
/// `settled` holds for its members.
async fn follow(
    client: &Client,
    nodes: &[String],
    committed: u64,
    settled: impl Fn(&MembershipView) -> bool,
) -> Result<MembershipView, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if let Some((view, line)) = progress(client, nodes).await {
            println!("  {line}");
            if view.epoch > committed && view.stage == "stable" && settled(&view) {
                return Ok(view);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the change did not settle within {SETTLE_TIMEOUT:?}; follow it with `ringkv cluster transfers`"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Prints the plan a stage answered with, commits exactly that plan and prints the outcome.
async fn commit_shown(
    client: &Client,
    plan: &MembershipView,
    what: &str,
    id: &str,
) -> Result<MembershipView, String> {
    println!(
        "plan: epoch {}, {} replicas move (ideal {}), ~{:.1} MB",
        plan.plan_epoch,
        plan.replicas_moved,
        plan.replicas_ideal,
        plan.bytes as f64 / 1e6
    );
    let committed = client
        .commit(plan.plan_hash)
        .await
        .map_err(|e| format!("committing the {what} of {id}: {e}"))?;
    println!("{}", committed.note);
    Ok(committed)
}

/// `ringkv cluster add`: starts the next node (`nK`, next port) joining through the first
/// member, stages and commits its join, and waits until it holds its partitions.
pub async fn add(dir: &Path) -> Result<(), String> {
    let (client, mut state) = connect(dir).await?;
    let next = state
        .nodes
        .iter()
        .filter_map(|n| n.id.strip_prefix('n').and_then(|k| k.parse::<u32>().ok()))
        .max()
        .unwrap_or(0)
        + 1;
    let id = format!("n{next}");
    let addrs: Vec<std::net::SocketAddr> = state
        .nodes
        .iter()
        .filter_map(|n| n.addr.parse().ok())
        .collect();
    let seed = *addrs.first().ok_or("the launched cluster has no nodes")?;
    let port = addrs.iter().map(|a| a.port()).max().unwrap_or(7400) + 1;
    let addr = std::net::SocketAddr::new(seed.ip(), port);
    if std::net::TcpListener::bind(addr).is_err() {
        return Err(format!(
            "{addr} is in use; free it or stop what listens there"
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ringkv binary: {e}"))?;
    let log = dir.join(&id).join("node.log");
    let extra = [
        "--addr".to_string(),
        addr.to_string(),
        "--join".to_string(),
        seed.to_string(),
    ];
    let cfg = crate::config::ClusterConfig::load(&state.config).map_err(|e| e.0)?;
    crate::certs::ensure_for_node(&cfg, &id, addr.ip())?;
    let mut child = spawn_node(&exe, &state.config, &id, &log, true, &extra)
        .map_err(|e| format!("could not start node {id}: {e}"))?;
    state.nodes.push(LaunchedNode {
        id: id.clone(),
        addr: addr.to_string(),
        pid: child.id(),
        log: log.clone(),
    });
    write_state(dir, &state)?;
    println!(
        "started {id} at {addr} (pid {}), joining through {seed}",
        child.id()
    );
    // The new node answers once it fetched the placement from its seed.
    let mut cc = ClientConfig::from_file(&state.config).map_err(|e| e.to_string())?;
    add_launched(&mut cc, &state);
    cc.connect_timeout = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "node {id} exited during startup ({status}); last lines of {}:\n{}",
                log.display(),
                tail(&log, 15)
            ));
        }
        if let Ok(c) = Client::connect(cc.clone()).await
            && c.node_status(&id).await.is_ok_and(|s| s.ring_version > 0)
        {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "node {id} did not come up within 60 s; see {}",
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let plan = client
        .stage(Change::Join {
            id: id.clone(),
            addr: addr.to_string(),
        })
        .await
        .map_err(|e| format!("staging the join of {id}: {e}"))?;
    let committed = commit_shown(&client, &plan, "join", &id).await?;
    let nodes: Vec<String> = state.nodes.iter().map(|n| n.id.clone()).collect();
    let done = follow(&client, &nodes, committed.epoch, |v| {
        v.members.contains(&id)
    })
    .await?;
    println!(
        "{id} joined: epoch {}, members {}",
        done.epoch,
        done.members.join(" ")
    );
    Ok(())
}

/// `ringkv cluster remove ID`: stages and commits the node's leave, waits until it handed
/// off every partition and hint, then stops it.
pub async fn remove(dir: &Path, id: &str) -> Result<(), String> {
    let (client, mut state) = connect(dir).await?;
    let Some(node) = state.nodes.iter().find(|n| n.id == id).cloned() else {
        let ids: Vec<&str> = state.nodes.iter().map(|n| n.id.as_str()).collect();
        return Err(format!(
            "no launched node {id}: launched are {}",
            ids.join(", ")
        ));
    };
    let plan = client
        .stage(Change::Leave { id: id.to_string() })
        .await
        .map_err(|e| format!("staging the leave of {id}: {e}"))?;
    let committed = commit_shown(&client, &plan, "leave", id).await?;
    let nodes: Vec<String> = state.nodes.iter().map(|n| n.id.clone()).collect();
    follow(&client, &nodes, committed.epoch, |v| {
        !v.members.iter().any(|m| m == id)
    })
    .await?;
    // Hints it keeps for down owners must reach them first.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match client.node_status(id).await {
            Ok(s) if s.hints_waiting > 0 => {
                println!(
                    "  {id} still holds {} hints for down owners",
                    s.hints_waiting
                );
            }
            _ => break,
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{id} still holds hints; bring their owners up, then stop it"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if pid_alive(node.pid) {
        stop_pids(vec![node.pid], Duration::from_secs(30));
    }
    state.nodes.retain(|n| n.id != id);
    write_state(dir, &state)?;
    println!("{id} left and stopped (pid {})", node.pid);
    Ok(())
}
