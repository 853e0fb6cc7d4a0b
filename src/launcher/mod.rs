//! The local multi-process cluster launcher: `ringkv cluster up | status | down`, and
//! `add | remove` of one node while the cluster serves ([`resize`]).
//!
//! `up` writes the effective configuration to `DIR/cluster.toml`, starts one `ringkv node`
//! process per member, records their pids in `DIR/launcher.json`, and waits until every node
//! answers a ping through the SDK. In the foreground it prefixes each node's output with
//! `[id]`, copies it to `DIR/<id>/node.log`, and stops the nodes on Ctrl-C or SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

mod resize;

pub use resize::{add, remove};

use crate::client::{Client, ClientConfig};
use crate::config::{ClusterConfig, MemberConfig};

/// What `cluster up` was asked for.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Configuration to start from.
    pub config: PathBuf,
    /// Generate this many members on loopback instead of the file's list.
    pub nodes: Option<usize>,
    /// Data folder (defaults to the configuration's `data_dir`).
    pub data_dir: Option<PathBuf>,
    /// First port of generated or renumbered members.
    pub base_port: Option<u16>,
    /// Give member i (1-based) its own loopback address 127.0.0.i to listen and dial from.
    pub distinct_addrs: bool,
    /// Return once every node is ready, leaving them running.
    pub detach: bool,
    /// Turn `[autoscale]` on with the local provisioner, whatever the file says.
    pub autoscale: bool,
    /// Run every link over mutual TLS, with a CA and certificates made in `DIR/tls`.
    pub tls: bool,
}

/// One launched node, as recorded in `launcher.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchedNode {
    /// Node id.
    pub id: String,
    /// Listen address.
    pub addr: String,
    /// Process id.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
}

/// The launcher's state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LauncherState {
    /// Pid of the `cluster up` process (it exits after `--detach`).
    pub launcher_pid: u32,
    /// The effective configuration file.
    pub config: PathBuf,
    /// The nodes it started.
    pub nodes: Vec<LaunchedNode>,
}

/// Writes `DIR/launcher.json`.
pub fn write_state(dir: &Path, state: &LauncherState) -> Result<(), String> {
    // Through a rename, so a reader in another process never sees half a file.
    let tmp = dir.join(format!("launcher.json.{}", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(state).expect("state serializes"),
    )
    .and_then(|()| std::fs::rename(&tmp, state_path(dir)))
    .map_err(|e| format!("cannot write launcher state: {e}"))
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("launcher.json")
}

/// Reads `DIR/launcher.json`.
pub fn read_state(dir: &Path) -> Result<LauncherState, String> {
    let p = state_path(dir);
    let text = std::fs::read_to_string(&p).map_err(|_| {
        format!(
            "no cluster launched in {} (no {})",
            dir.display(),
            p.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", p.display()))
}

/// True while a process with this pid runs. A zombie counts as exited: detached nodes are
/// reaped by init, which may not have done so yet.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) == 0 };
    exists && !is_zombie(pid)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: sending a signal to a pid we launched.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The loopback address of member `i` (0-based) under `--distinct-addrs`: 127.0.0.(i+1).
fn distinct_ip(i: usize) -> Result<IpAddr, String> {
    let last = u8::try_from(i + 1)
        .ok()
        .filter(|&n| n < 255)
        .ok_or("--distinct-addrs gives node i the address 127.0.0.i: at most 254 nodes")?;
    Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// Builds the effective configuration for `up`. Under `--distinct-addrs` the ports stay
/// consecutive as without it: the same ports are taken, and each node is still known by its
/// port alone.
fn effective_config(opts: &UpOptions) -> Result<ClusterConfig, String> {
    let mut cfg = ClusterConfig::load(&opts.config).map_err(|e| e.0)?;
    let mut base_port = opts.base_port;
    if let Some(k) = opts.nodes {
        if k == 0 {
            return Err("--nodes must be at least 1".into());
        }
        cfg.members = (0..k)
            .map(|i| MemberConfig {
                id: format!("n{}", i + 1),
                addr: "127.0.0.1:7401".into(),
            })
            .collect();
        cfg.cluster.replicas = cfg.cluster.replicas.min(k);
        base_port = Some(base_port.unwrap_or(7401));
    }
    for (i, m) in cfg.members.iter_mut().enumerate() {
        let mut addr: SocketAddr = m
            .addr
            .parse()
            .map_err(|_| format!("member address '{}' is not ip:port", m.addr))?;
        if let Some(base) = base_port {
            let port = u16::try_from(usize::from(base) + i)
                .map_err(|_| format!("--base-port {base} leaves no port for member {}", m.id))?;
            addr.set_port(port);
        }
        if opts.distinct_addrs {
            addr.set_ip(distinct_ip(i)?);
        }
        m.addr = addr.to_string();
    }
    let dir = opts
        .data_dir
        .clone()
        .unwrap_or(cfg.cluster.data_dir.clone());
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    cfg.cluster.data_dir =
        std::fs::canonicalize(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if opts.autoscale {
        cfg.autoscale.enabled = true;
        cfg.autoscale.provisioner = "local".into();
        cfg.autoscale.local.dir = cfg.cluster.data_dir.clone();
    }
    if opts.tls {
        let tls_dir = cfg.cluster.data_dir.join("tls");
        cfg.tls.enabled = true;
        cfg.tls.ca = tls_dir.join("ca.crt");
        cfg.tls.cert = tls_dir.join("{id}.crt");
        cfg.tls.key = tls_dir.join("{id}.key");
        // One flag secures everything: the Redis and metrics listeners too.
        cfg.resp.tls = cfg.resp.enabled;
        cfg.metrics.tls = cfg.metrics.enabled;
    }
    cfg.validate().map_err(|e| e.0)?;
    Ok(cfg)
}

/// With `--tls`: the launcher's CA in `DIR/tls` (made on the first `up`) and a certificate for
/// every member and for clients, each made once.
fn make_certificates(cfg: &ClusterConfig) -> Result<(), String> {
    let dir = cfg.cluster.data_dir.join("tls");
    crate::certs::Authority::open_or_create(&dir)?;
    for m in cfg.member_addrs() {
        crate::certs::ensure_for_node(cfg, &m.id, m.addr.ip())?;
    }
    crate::certs::ensure_for_node(cfg, crate::config::tls::CLIENT_ID, [127, 0, 0, 1].into())
}

/// `ringkv cluster up`.
pub async fn up(opts: UpOptions) -> Result<(), String> {
    let cfg = effective_config(&opts)?;
    let dir = cfg.cluster.data_dir.clone();
    if let Ok(old) = read_state(&dir) {
        let live: Vec<String> = old
            .nodes
            .iter()
            .filter(|n| pid_alive(n.pid))
            .map(|n| format!("{} (pid {})", n.id, n.pid))
            .collect();
        if !live.is_empty() {
            return Err(format!(
                "a cluster is already running in {}: {}; stop it with `ringkv cluster down --data-dir {}`",
                dir.display(),
                live.join(", "),
                dir.display()
            ));
        }
    }
    if opts.tls {
        make_certificates(&cfg)?;
    }
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, cfg.to_toml())
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    for m in &cfg.members {
        cfg.node_settings(&m.id).map_err(|e| e.0)?;
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ringkv binary: {e}"))?;
    let mut children: Vec<Child> = Vec::new();
    let mut launched = Vec::new();
    for m in &cfg.members {
        let log = dir.join(&m.id).join("node.log");
        match spawn_node(&exe, &config_path, &m.id, &log, opts.detach, &[]) {
            Ok(child) => {
                launched.push(LaunchedNode {
                    id: m.id.clone(),
                    addr: m.addr.clone(),
                    pid: child.id(),
                    log,
                });
                children.push(child);
            }
            Err(e) => {
                stop_pids(
                    launched.iter().map(|n| n.pid).collect(),
                    Duration::from_secs(10),
                );
                return Err(format!("could not start node {}: {e}", m.id));
            }
        }
    }
    let state = LauncherState {
        launcher_pid: std::process::id(),
        config: config_path.clone(),
        nodes: launched.clone(),
    };
    write_state(&dir, &state)?;

    if let Err(e) = wait_ready(&cfg, &mut children, &launched).await {
        stop_pids(
            launched.iter().map(|n| n.pid).collect(),
            Duration::from_secs(10),
        );
        reap(&mut children);
        let _ = std::fs::remove_file(state_path(&dir));
        return Err(e);
    }
    println!(
        "ringkv: {} node(s) ready, data in {}",
        launched.len(),
        dir.display()
    );
    // The listeners beside each node's member address (validated before the nodes started).
    let resp_of = |n: &LaunchedNode| {
        let a = n.addr.parse().ok()?;
        cfg.resp.addr_for(a).ok().flatten()
    };
    let metrics_of = |n: &LaunchedNode| {
        let a = n.addr.parse().ok()?;
        cfg.metrics.addr_for(a).ok().flatten()
    };
    for n in &launched {
        let tls = if cfg.resp.tls { " (TLS)" } else { "" };
        let resp = resp_of(n).map_or(String::new(), |r| format!("  redis {r}{tls}"));
        let scheme = if cfg.metrics.tls { "https" } else { "http" };
        let metrics = metrics_of(n).map_or(String::new(), |m| {
            format!("  metrics {scheme}://{m}/metrics")
        });
        println!(
            "  {}  {}{resp}{metrics}  pid {}  log {}",
            n.id,
            n.addr,
            n.pid,
            n.log.display()
        );
    }
    println!(
        "  try: ringkv --config {} put hello world",
        config_path.display()
    );
    if let Some(r) = launched.first().and_then(resp_of) {
        let tls = if cfg.resp.tls {
            format!("--tls --cacert {} ", cfg.tls.ca.display())
        } else {
            String::new()
        };
        println!("   or: redis-cli {tls}-p {} set hello world", r.port());
    }
    if opts.detach {
        println!(
            "  stop with: ringkv cluster down --data-dir {}",
            dir.display()
        );
        return Ok(());
    }
    println!("  Ctrl-C stops the cluster");
    let _ = std::io::stdout().flush();
    wait_for_stop(&mut children).await;
    // Nodes added since (`cluster add`, the autoscaler) are in the state file, not `launched`.
    let all = read_state(&dir).map_or(launched, |s| s.nodes);
    println!("ringkv: stopping {} node(s)", all.len());
    stop_pids(
        all.iter()
            .map(|n| n.pid)
            .filter(|&p| pid_alive(p))
            .collect(),
        Duration::from_secs(30),
    );
    reap(&mut children);
    let _ = std::fs::remove_file(state_path(&dir));
    println!("ringkv: cluster stopped");
    Ok(())
}

/// Starts one `ringkv node` process for `id`; `detach` puts it in its own session, logging
/// to `log` only.
pub fn spawn_node(
    exe: &Path,
    config: &Path,
    id: &str,
    log: &Path,
    detach: bool,
    extra: &[String],
) -> std::io::Result<Child> {
    std::fs::create_dir_all(log.parent().unwrap())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--config")
        .arg(config)
        .arg("node")
        .arg("--node")
        .arg(id)
        .args(extra);
    cmd.stdin(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,ractor_cluster=error,ractor=warn");
    }
    if detach {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        cmd.stdout(out.try_clone()?).stderr(out);
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe; it detaches the node from the terminal's
        // process group so the launcher's Ctrl-C does not reach it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        return cmd.spawn();
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for stream in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err),
    ] {
        let id = id.to_string();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                println!("[{id}] {line}");
                let _ = writeln!(file, "{line}");
            }
        });
    }
    Ok(child)
}

async fn wait_ready(
    cfg: &ClusterConfig,
    children: &mut [Child],
    nodes: &[LaunchedNode],
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client_cfg = ClientConfig::from_cluster(cfg);
    client_cfg.connect_timeout = Duration::from_millis(500);
    client_cfg.timeout = Duration::from_secs(2);
    loop {
        for (child, node) in children.iter_mut().zip(nodes) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "node {} exited during startup ({status}); last lines of {}:\n{}",
                    node.id,
                    node.log.display(),
                    tail(&node.log, 15)
                ));
            }
        }
        if let Ok(client) = Client::connect(client_cfg.clone()).await {
            // Ready means serving and agreeing with every member on the ring. The pid check
            // keeps another cluster already answering on these ports from passing for ours.
            let mut ready = 0;
            for (child, n) in children.iter().zip(nodes) {
                match client.node_status(&n.id).await {
                    Ok(s) if s.pid != child.id() => {
                        return Err(format!(
                            "another process ({}) already serves node {} at its address; stop it first (`ringkv cluster down`) or pick other ports (--base-port)",
                            if s.pid == 0 {
                                "an older ringkv".to_string()
                            } else {
                                format!("pid {}", s.pid)
                            },
                            n.id
                        ));
                    }
                    Ok(s) if s.ring_agreed => ready += 1,
                    _ => {}
                }
            }
            if ready == nodes.len() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err("nodes did not become ready (serving and agreeing on the ring) within 60 s; see their node.log files".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_stop(children: &mut [Child]) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = tick.tick() => {
                for c in children.iter_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        eprintln!("ringkv: node pid {} exited ({status})", c.id());
                    }
                }
            }
        }
    }
}

fn reap(children: &mut [Child]) {
    for c in children {
        let _ = c.wait();
    }
}

/// Sends SIGTERM, waits up to `grace` for each process to exit, then SIGKILLs what remains.
pub fn stop_pids(pids: Vec<u32>, grace: Duration) -> Vec<(u32, bool)> {
    for &p in &pids {
        signal(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let mut out = Vec::new();
    for p in pids {
        while pid_alive(p) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let clean = !pid_alive(p);
        if !clean {
            signal(p, libc::SIGKILL);
        }
        out.push((p, clean));
    }
    out
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Status of one launched node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Node id.
    pub id: String,
    /// Listen address.
    pub addr: String,
    /// Process id.
    pub pid: u32,
    /// `up` (answers), `unresponsive` (process alive, no answer) or `down` (no process).
    pub status: String,
    /// The ring epoch the node is at, when it answered.
    pub epoch: Option<u64>,
    /// Stage of the membership change at that epoch.
    pub stage: Option<String>,
}

/// `ringkv cluster status`.
pub async fn status(dir: &Path) -> Result<Vec<NodeReport>, String> {
    let state = read_state(dir)?;
    let mut client = None;
    if let Ok(mut cc) = ClientConfig::from_file(&state.config) {
        add_launched(&mut cc, &state);
        cc.connect_timeout = Duration::from_millis(1000);
        cc.timeout = Duration::from_millis(1000);
        client = Client::connect(cc).await.ok();
    }
    let mut out = Vec::new();
    for n in &state.nodes {
        let answer = match &client {
            Some(c) if pid_alive(n.pid) => c.node_status(&n.id).await.ok(),
            _ => None,
        };
        let status = match (&answer, pid_alive(n.pid)) {
            (_, false) => "down",
            (Some(_), true) => "up",
            (None, true) => "unresponsive",
        };
        out.push(NodeReport {
            id: n.id.clone(),
            addr: n.addr.clone(),
            pid: n.pid,
            status: status.into(),
            epoch: answer.as_ref().map(|s| s.ring_version),
            stage: answer.map(|s| s.stage),
        });
    }
    Ok(out)
}

/// Adds the launched nodes the configuration does not list (added since `up`) to `cc`.
fn add_launched(cc: &mut ClientConfig, state: &LauncherState) {
    for n in &state.nodes {
        if !cc.members.iter().any(|(id, _)| *id == n.id)
            && let Ok(addr) = n.addr.parse()
        {
            cc.members.push((n.id.clone(), addr));
        }
    }
}

/// `ringkv cluster down`: stops every launched node (SIGTERM, then SIGKILL after 30 s).
pub fn down(dir: &Path) -> Result<(), String> {
    let state = read_state(dir)?;
    let pids: Vec<u32> = state
        .nodes
        .iter()
        .map(|n| n.pid)
        .filter(|&p| pid_alive(p))
        .collect();
    let results = stop_pids(pids, Duration::from_secs(30));
    for n in &state.nodes {
        match results.iter().find(|(p, _)| *p == n.pid) {
            Some((_, true)) => println!("stopped {} (pid {})", n.id, n.pid),
            Some((_, false)) => println!("killed {} (pid {}) after 30 s", n.id, n.pid),
            None => println!("{} (pid {}) was not running", n.id, n.pid),
        }
    }
    std::fs::remove_file(state_path(dir))
        .map_err(|e| format!("cannot remove launcher state: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, nodes: Option<usize>, distinct_addrs: bool) -> UpOptions {
        let config = dir.join("cluster.toml");
        std::fs::write(
            &config,
            "[cluster]\ncookie = \"c\"\nreplicas = 2\n\n\
             [[members]]\nid = \"a\"\naddr = \"127.0.0.1:7501\"\n\n\
             [[members]]\nid = \"b\"\naddr = \"127.0.0.1:7502\"\n",
        )
        .unwrap();
        UpOptions {
            config,
            nodes,
            data_dir: Some(dir.join("data")),
            base_port: None,
            detach: true,
            distinct_addrs,
            autoscale: false,
            tls: false,
        }
    }

    fn addrs(cfg: &ClusterConfig) -> Vec<(&str, &str)> {
        cfg.members
            .iter()
            .map(|m| (m.id.as_str(), m.addr.as_str()))
            .collect()
    }

    #[test]
    fn distinct_addrs_give_member_i_the_address_127_0_0_i() {
        let d = tempfile::tempdir().unwrap();
        let cfg = effective_config(&options(d.path(), Some(3), true)).unwrap();
        assert_eq!(
            addrs(&cfg),
            [
                ("n1", "127.0.0.1:7401"),
                ("n2", "127.0.0.2:7402"),
                ("n3", "127.0.0.3:7403")
            ]
        );
        let cfg = effective_config(&options(d.path(), None, true)).unwrap();
        assert_eq!(
            addrs(&cfg),
            [("a", "127.0.0.1:7501"), ("b", "127.0.0.2:7502")]
        );
        let cfg = effective_config(&options(d.path(), None, false)).unwrap();
        assert_eq!(
            addrs(&cfg),
            [("a", "127.0.0.1:7501"), ("b", "127.0.0.1:7502")]
        );
        let err = effective_config(&options(d.path(), Some(255), true)).unwrap_err();
        assert!(err.contains("at most 254"), "{err}");
    }

    #[test]
    fn a_file_may_list_members_on_distinct_loopback_addresses_sharing_a_port() {
        let d = tempfile::tempdir().unwrap();
        let opts = options(d.path(), None, false);
        let text = std::fs::read_to_string(&opts.config).unwrap();
        let shared_port = text.replace("127.0.0.1:7502", "127.0.0.2:7501");
        std::fs::write(&opts.config, &shared_port).unwrap();
        let cfg = effective_config(&opts).unwrap();
        assert_eq!(
            addrs(&cfg),
            [("a", "127.0.0.1:7501"), ("b", "127.0.0.2:7501")]
        );
        std::fs::write(&opts.config, shared_port.replace("127.0.0.2", "127.0.0.1")).unwrap();
        let err = effective_config(&opts).unwrap_err();
        assert!(err.contains("used by two members"), "{err}");
    }
}
