//! The `local` provisioner: nodes as processes on this machine, next to the ones `ringkv
//! cluster up` started. A new node takes the next `nK` id and the port after the highest one
//! in use, is recorded in the launcher's `launcher.json` (so `cluster status` and `cluster
//! down` see it), and logs to `DIR/nK/node.log`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{NodeSpec, ProvisionRequest};
use crate::launcher::{self, LaunchedNode};

/// How many ports past the highest one in use a new node may try.
const PORT_TRIES: u16 = 32;
/// How long a released node may take to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Starts and stops node processes of a launched cluster.
#[derive(Debug)]
pub struct Local {
    dir: PathBuf,
}

impl Local {
    /// A provisioner for the cluster launched in `dir`.
    pub fn new(dir: PathBuf) -> Local {
        Local { dir }
    }

    /// Starts `ringkv node --join SEED` as the next node.
    pub async fn provision(&self, req: &ProvisionRequest) -> Result<NodeSpec, String> {
        let dir = self.dir.clone();
        let req = req.clone();
        tokio::task::spawn_blocking(move || start(&dir, &req))
            .await
            .map_err(|e| format!("starting a node panicked: {e}"))?
    }

    /// Stops `id` (SIGTERM, SIGKILL after a grace period) and forgets it.
    pub async fn release(&self, id: &str) -> Result<(), String> {
        let dir = self.dir.clone();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || stop(&dir, &id))
            .await
            .map_err(|e| format!("stopping a node panicked: {e}"))?
    }
}

fn start(dir: &std::path::Path, req: &ProvisionRequest) -> Result<NodeSpec, String> {
    let mut state = launcher::read_state(dir)?;
    // A folder left by a node that was removed holds its old ring and files: a new node
    // starts clean under an id never used here.
    let mut ids: Vec<String> = state.nodes.iter().map(|n| n.id.clone()).collect();
    let mut id = req.id.clone();
    while ids.contains(&id) || dir.join(&id).exists() {
        ids.push(id);
        id = super::next_id(&ids);
    }
    let seed: SocketAddr = req
        .seed
        .parse()
        .map_err(|_| format!("seed address '{}' is not ip:port", req.seed))?;
    let highest = state
        .nodes
        .iter()
        .filter_map(|n| n.addr.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .max()
        .unwrap_or(seed.port());
    let addr = (1..=PORT_TRIES)
        .filter_map(|i| highest.checked_add(i))
        .map(|port| SocketAddr::new(seed.ip(), port))
        .find(|a| std::net::TcpListener::bind(a).is_ok())
        .ok_or_else(|| format!("no free port in the {PORT_TRIES} after {highest}"))?;
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
    let mut child = launcher::spawn_node(&exe, &state.config, &id, &log, true, &extra)
        .map_err(|e| format!("could not start node {id}: {e}"))?;
    let pid = child.id();
    // This process is the new node's parent: reap it when it exits.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    state.nodes.push(LaunchedNode {
        id: id.clone(),
        addr: addr.to_string(),
        pid,
        log,
    });
    launcher::write_state(dir, &state)?;
    tracing::info!(%id, %addr, pid, "autoscaler started a local node");
    Ok(NodeSpec {
        id,
        addr: addr.to_string(),
    })
}

fn stop(dir: &std::path::Path, id: &str) -> Result<(), String> {
    let mut state = launcher::read_state(dir)?;
    let Some(node) = state.nodes.iter().find(|n| n.id == id).cloned() else {
        return Ok(());
    };
    if launcher::pid_alive(node.pid) {
        launcher::stop_pids(vec![node.pid], STOP_GRACE);
    }
    // Re-read: a `cluster add` may have written the file meanwhile.
    state = launcher::read_state(dir).unwrap_or(state);
    state.nodes.retain(|n| n.id != id);
    launcher::write_state(dir, &state)?;
    tracing::info!(%id, pid = node.pid, "autoscaler stopped a local node");
    Ok(())
}
