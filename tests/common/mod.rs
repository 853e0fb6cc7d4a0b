//! Test harness: real `ringkv node` processes on loopback, driven through the SDK and the CLI.
//!
//! ractor's process-group registry is global to a process, so every test cluster uses node ids
//! unique to it (`<prefix>1`, `<prefix>2`, …) to keep clusters in one test binary apart.
//!
//! A cluster started with [`TestCluster::start_distinct`] gives each node its own loopback
//! address in a [`LoopbackBlock`] reserved for it machine-wide, so firewall rules between those
//! addresses ([`netfault`]) affect that cluster alone.

#![allow(dead_code)]

pub mod checker;
pub mod netfault;
pub mod workload;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringkv::{Client, ClientConfig};

/// Path of the `ringkv` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ringkv"))
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A free port on `ip` (bound, then released), below the kernel's ephemeral range: a port the
/// kernel handed out for `:0` can be taken again by any outgoing connection (clients and nodes
/// dial constantly here) before the node binds it. Never the same port twice per process.
pub fn free_port_on(ip: IpAddr) -> u16 {
    use rand::Rng;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = rand::rng().random_range(20_000..32_000);
        if !given.contains(&port) && TcpListener::bind((ip, port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Addresses 127.a.b.1..=254 reserved for one user across every process on this machine, for
/// as long as this value lives (an exclusive `flock` on a lock file per block).
pub struct LoopbackBlock {
    a: u8,
    b: u8,
    _lock: File,
}

impl LoopbackBlock {
    /// Reserves a random block that no live process holds; never 127.0.0.x, which every other
    /// test and tool on the machine uses.
    pub fn reserve() -> LoopbackBlock {
        use rand::Rng;
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join("ringkv-test-loopback");
        let _ = std::fs::create_dir(&dir);
        // Shared by every user's tests, like /tmp itself (fails harmlessly unless the owner).
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let (a, b) = (rng.random_range(1..=254u8), rng.random::<u8>());
            let path = dir.join(format!("127.{a}.{b}.lock"));
            // flock needs no write access, so a lock file another user created still serves.
            let lock = std::fs::File::open(&path)
                .or_else(|_| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                })
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            // SAFETY: flock on a descriptor this function owns; the lock lives as long as it.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return LoopbackBlock { a, b, _lock: lock };
            }
        }
        panic!("no free loopback block after 1000 tries");
    }

    /// Address `n` (1..=254) of the block.
    pub fn ip(&self, n: u8) -> IpAddr {
        assert!((1..=254).contains(&n), "host {n} is outside 1..=254");
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, n))
    }
}

/// Polls `check` until it returns true or `deadline` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster of node processes in a temporary folder.
pub struct TestCluster {
    /// Temporary folder holding the config and the data.
    pub dir: tempfile::TempDir,
    /// The configuration file.
    pub config: PathBuf,
    /// Node ids, in member order.
    pub ids: Vec<String>,
    /// Member addresses, in member order.
    pub addrs: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    env: Vec<(String, String)>,
    /// Per node, environment variables of that node alone.
    node_env: Vec<Vec<(String, String)>>,
    block: Option<LoopbackBlock>,
    /// Per node, arguments after `--node ID` (`--addr`, `--join` for nodes added later).
    args: Vec<Vec<String>>,
}

impl TestCluster {
    /// Writes a config for `nodes` members named `<prefix>1..` with `extra` TOML appended
    /// to the `[cluster]` section's neighbours, without starting anything.
    pub fn configure(prefix: &str, nodes: usize, extra: &str) -> TestCluster {
        TestCluster::configure_replicated(prefix, nodes, 1, extra)
    }

    /// Like [`TestCluster::configure`], with replication factor `replicas`.
    pub fn configure_replicated(
        prefix: &str,
        nodes: usize,
        replicas: usize,
        extra: &str,
    ) -> TestCluster {
        TestCluster::configure_on(prefix, nodes, replicas, extra, None)
    }

    /// Like [`TestCluster::configure_replicated`], with node `i` (0-based) listening on and
    /// dialling from its own address `.{i + 1}` of a freshly reserved [`LoopbackBlock`].
    pub fn configure_distinct(
        prefix: &str,
        nodes: usize,
        replicas: usize,
        extra: &str,
    ) -> TestCluster {
        assert!(nodes <= 254, "a loopback block holds 254 nodes");
        TestCluster::configure_on(
            prefix,
            nodes,
            replicas,
            extra,
            Some(LoopbackBlock::reserve()),
        )
    }

    fn configure_on(
        prefix: &str,
        nodes: usize,
        replicas: usize,
        extra: &str,
        block: Option<LoopbackBlock>,
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (1..=nodes).map(|i| format!("{prefix}{i}")).collect();
        let addrs: Vec<SocketAddr> = (1..=nodes)
            .map(|n| {
                let ip = block
                    .as_ref()
                    .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |b| b.ip(n as u8));
                SocketAddr::new(ip, free_port_on(ip))
            })
            .collect();
        let mut toml = format!(
            "[cluster]\ncookie = \"test-cookie\"\npartitions = 16\nreplicas = {replicas}\ndata_dir = \"data\"\n\n",
        );
        for (id, addr) in ids.iter().zip(&addrs) {
            toml += &format!("[[members]]\nid = \"{id}\"\naddr = \"{addr}\"\n\n");
        }
        toml += "[client]\ntimeout_ms = 5000\nconnect_timeout_ms = 10000\n\n";
        toml += extra;
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).unwrap();
        let children = ids.iter().map(|_| None).collect();
        let args = ids.iter().map(|_| Vec::new()).collect();
        let node_env = ids.iter().map(|_| Vec::new()).collect();
        TestCluster {
            dir,
            config,
            ids,
            addrs,
            children,
            env: Vec::new(),
            node_env,
            block,
            args,
        }
    }

    /// Adds an environment variable to every node started from now on.
    pub fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// Sets node `i`'s own environment for its next starts (replacing what was set before).
    pub fn env_for(&mut self, i: usize, vars: &[(&str, &str)]) {
        self.node_env[i] = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Configures and starts every node, waiting until each answers a ping.
    pub async fn start(prefix: &str, nodes: usize, extra: &str) -> TestCluster {
        let mut c = TestCluster::configure(prefix, nodes, extra);
        for i in 0..nodes {
            c.spawn(i);
        }
        c.wait_ready().await;
        c
    }

    /// The log file of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.ids[i]))
    }

    /// Starts node `i`'s process (it must not be running).
    pub fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("node")
            .arg("--node")
            .arg(&self.ids[i])
            .args(&self.args[i])
            .env("RUST_LOG", "info,ractor_cluster=error,ractor=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in self.env.iter().chain(&self.node_env[i]) {
            cmd.env(k, v);
        }
        self.children[i] = Some(cmd.spawn().expect("ringkv node starts"));
    }

    /// Starts `nodes` nodes replicating every key `replicas` times and waits until each sees
    /// every other one up.
    pub async fn start_replicated(
        prefix: &str,
        nodes: usize,
        replicas: usize,
        extra: &str,
    ) -> TestCluster {
        let mut c = TestCluster::configure_replicated(prefix, nodes, replicas, extra);
        for i in 0..nodes {
            c.spawn(i);
        }
        c.wait_ready().await;
        c
    }

    /// Starts `nodes` nodes on distinct loopback addresses (see
    /// [`TestCluster::configure_distinct`]) and waits until each sees every other one up.
    pub async fn start_distinct(
        prefix: &str,
        nodes: usize,
        replicas: usize,
        extra: &str,
    ) -> TestCluster {
        let mut c = TestCluster::configure_distinct(prefix, nodes, replicas, extra);
        for i in 0..nodes {
            c.spawn(i);
        }
        c.wait_ready().await;
        c
    }

    /// Starts a node `id` the configuration does not list, on a fresh address, joining through
    /// node `seed`; returns its index. It holds nothing until a committed join names it.
    pub fn spawn_joining(&mut self, id: &str, seed: usize) -> usize {
        let n = self.ids.len() + 1;
        let ip = self
            .block
            .as_ref()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |b| b.ip(n as u8));
        let addr = SocketAddr::new(ip, free_port_on(ip));
        self.ids.push(id.to_string());
        self.addrs.push(addr);
        self.children.push(None);
        self.node_env.push(Vec::new());
        self.args.push(vec![
            "--addr".into(),
            addr.to_string(),
            "--join".into(),
            self.addrs[seed].to_string(),
        ]);
        let i = self.ids.len() - 1;
        self.spawn(i);
        i
    }

    /// A client that dials every node this harness started, listed or not.
    pub async fn client_all(&self) -> Client {
        let mut cc = self.client_config(Duration::from_secs(10));
        for (id, addr) in self.ids.iter().zip(&self.addrs) {
            if !cc.members.iter().any(|(m, _)| m == id) {
                cc.members.push((id.clone(), *addr));
            }
        }
        Client::connect(cc).await.expect("client connects")
    }

    /// Node `i`'s IP address.
    pub fn ip(&self, i: usize) -> IpAddr {
        self.addrs[i].ip()
    }

    /// True while node `i`'s process runs.
    pub fn running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// Waits until every running node answers and sees every other running node up.
    pub async fn wait_ready(&mut self) {
        self.wait_answering().await;
        let client = self.client().await;
        let running: Vec<String> = (0..self.ids.len())
            .filter(|&i| self.running(i))
            .map(|i| self.ids[i].clone())
            .collect();
        wait_until(
            "running nodes to see each other up",
            Duration::from_secs(60),
            || {
                let (client, running) = (client.clone(), running.clone());
                async move {
                    for id in &running {
                        match client.members(id).await {
                            Ok(view)
                                if running
                                    .iter()
                                    .all(|r| view.iter().any(|m| &m.id == r && m.up)) => {}
                            _ => return false,
                        }
                    }
                    true
                }
            },
        )
        .await;
    }

    /// Waits until every running node answers a ping through a fresh SDK connection.
    async fn wait_answering(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for (i, c) in self.children.iter_mut().enumerate() {
                if let Some(child) = c
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "node {} exited during startup ({status}):\n{}",
                        self.ids[i],
                        std::fs::read_to_string(
                            self.dir.path().join(format!("{}.log", self.ids[i]))
                        )
                        .unwrap_or_default()
                    );
                }
            }
            if let Ok(client) =
                Client::connect(self.client_config(Duration::from_millis(300))).await
            {
                let mut all = true;
                for (i, id) in self.ids.iter().enumerate() {
                    if self.children[i].is_some() && client.ping(Some(id)).await.is_err() {
                        all = false;
                    }
                }
                if all {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "cluster did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn client_config(&self, connect_timeout: Duration) -> ClientConfig {
        let mut cc = ClientConfig::from_file(&self.config).unwrap();
        cc.connect_timeout = connect_timeout;
        cc
    }

    /// A connected SDK client.
    pub async fn client(&self) -> Client {
        Client::connect(self.client_config(Duration::from_secs(10)))
            .await
            .expect("client connects")
    }

    /// Pid of node `i`'s process.
    pub fn pid(&self, i: usize) -> u32 {
        self.children[i].as_ref().expect("node running").id()
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs node `i` and waits for a clean exit; returns its exit status success.
    pub fn stop(&mut self, i: usize) -> bool {
        let Some(mut child) = self.children[i].take() else {
            return true;
        };
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the CLI against this cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("ringkv runs")
    }

    /// The data folder of node `i`.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join("data").join(&self.ids[i])
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }
}

/// Lines of each node's log shown when a test fails.
const LOG_TAIL_ON_FAILURE: usize = 60;

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        // The temporary folder goes with the cluster, so a failing test shows its nodes' last
        // words here (libtest prints a failed test's captured output).
        if std::thread::panicking() {
            for i in 0..self.ids.len() {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
                eprintln!(
                    "--- last lines of {}'s log ---\n{}",
                    self.ids[i],
                    tail.join("\n")
                );
            }
        }
    }
}

/// Runs the CLI with a given config path.
pub fn cli_with(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("ringkv runs")
}

/// A finished command's exit code and output, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that a command exited 0, showing its stderr otherwise.
pub fn assert_success(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates a file (for tests that need an unwritable path).
pub fn touch(path: &Path) {
    File::create(path).unwrap();
}

/// True once `pid` has exited (a zombie awaiting its reaper counts as exited).
pub fn process_gone(pid: u32) -> bool {
    !ringkv::launcher::pid_alive(pid)
}

/// Waits until `observer`'s failure detector reports `member` up (`true`) or down.
pub async fn wait_seen(client: &Client, observer: &str, member: &str, up: bool) {
    let state = if up { "up" } else { "down" };
    wait_until(
        &format!("{observer} to see {member} {state}"),
        Duration::from_secs(20),
        || async {
            client
                .members(observer)
                .await
                .is_ok_and(|v| v.iter().any(|m| m.id == member && m.up == up))
        },
    )
    .await;
}

/// Waits until every node answers and none holds a hint (handoff finished).
pub async fn wait_hints_drained(client: &Client, ids: &[String]) {
    wait_until(
        "every hint handed back",
        Duration::from_secs(60),
        || async {
            let mut waiting = 0;
            for id in ids {
                match client.node_status(id).await {
                    Ok(s) => waiting += s.hints_waiting,
                    Err(_) => return false,
                }
            }
            waiting == 0
        },
    )
    .await;
}
