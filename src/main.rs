//! The `ringkv` binary: node, launcher, one-shot client commands and the benchmark.
//!
//! Exit codes of one-shot commands: 0 success, 1 key not found (get), 2 any error (one line
//! on stderr naming the problem).

/// mimalloc: the node hot path allocates per message; glibc malloc was ~18% of node CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringkv::autoscale::service::AutoscaleSetup;
use ringkv::bench::{self, BenchOptions, KeyDistribution, Workload};
use ringkv::config::ClusterConfig;
use ringkv::launcher::{self, UpOptions};
use ringkv::{Client, ClientConfig, Context, KvError, RequestOptions};
use ringkv_actors::Node;
use ringkv_actors::core::quorum::Consistency;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A Dynamo-style distributed key-value store"
)]
struct Cli {
    /// Cluster configuration file.
    #[arg(long, global = true, default_value = "cluster.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node in the foreground.
    Node {
        /// Id of the node to run (a [[members]] entry, or a new id with --addr and --join).
        #[arg(long)]
        node: String,
        /// Address to listen on (default: the node's [[members]] entry).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// A running member to join through: the node fetches the current ring from it and
        /// holds no data until a committed `join` names it.
        #[arg(long)]
        join: Option<std::net::SocketAddr>,
    },
    /// Start, inspect or stop a local multi-process cluster.
    Cluster {
        #[command(subcommand)]
        action: ClusterCmd,
    },
    /// Write VALUE under KEY (VALUE `-` reads standard input).
    Put {
        /// The key.
        key: String,
        /// The value, or `-` for standard input.
        value: String,
        /// Causal context from a previous `get --json`, to supersede what it read.
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        common: OneShot,
    },
    /// Read KEY: prints each version; exit code 1 when absent.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        common: OneShot,
    },
    /// Delete KEY.
    Delete {
        /// The key.
        key: String,
        /// Causal context from a previous `get --json`.
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        common: OneShot,
    },
    /// Measure throughput and latency against the cluster.
    Bench {
        /// read | update | ping | mixed:<read percent>.
        #[arg(long, default_value = "read")]
        workload: Workload,
        /// Key space size.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Value size, bytes.
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Key popularity.
        #[arg(long, value_enum, default_value = "uniform")]
        distribution: KeyDistribution,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Print ops/s, errors and p99 every second while running (to stderr).
        #[arg(long)]
        progress: bool,
        /// Skip loading the keys before a read or mixed run (a previous run loaded them)
        #[arg(long)]
        no_load: bool,
        /// Start this many operations per second in all (open loop; latency counts from when
        /// each was due) instead of each request in flight starting the next at once.
        #[arg(long)]
        rate: Option<f64>,
        /// Drive a Redis-protocol server instead of the cluster through the SDK:
        /// resp://HOST:PORT (a ringkv node's Redis port, or a redis-server).
        #[arg(long)]
        target: Option<String>,
    },
    /// Make a certificate authority in DIR (unless it has one) and issue a certificate for
    /// each ID (DIR/ID.crt, DIR/ID.key) naming it, localhost and each --ip; nodes need one
    /// naming their member id, clients one for `client` (see `[tls]`).
    Certs {
        /// Folder of the CA and the certificates.
        #[arg(long)]
        dir: PathBuf,
        /// An address to name in every certificate issued (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Ids to issue certificates for.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Interactive admin console (status, members, ring, stats, aae, get/put/delete).
    Console {
        /// Run this one console command, print its result and exit with its exit code.
        #[arg(short = 'c', long)]
        command: Option<String>,
        /// Machine-readable output of every command.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct OneShot {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Request timeout in milliseconds (default from the configuration).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Replicas a read waits for: one, quorum, all or a number (default from the configuration).
    #[arg(short = 'r', long = "r")]
    r: Option<Consistency>,
    /// Replicas a write waits for: one, quorum, all or a number (default from the configuration).
    #[arg(short = 'w', long = "w")]
    w: Option<Consistency>,
    /// Send the request to this node (default: the key's replicas, then any member).
    #[arg(long)]
    via: Option<String>,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Start every member as its own process; returns when all are ready with --detach.
    Up {
        /// Generate K members n1..nK on consecutive ports from --base-port (default 7401)
        /// instead of the file's list.
        #[arg(long)]
        nodes: Option<usize>,
        /// Data folder (default: the configuration's data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// First port for generated or renumbered members.
        #[arg(long)]
        base_port: Option<u16>,
        /// Return once every node is ready, leaving them running.
        #[arg(long)]
        detach: bool,
        /// Give member i (1-based) its own loopback address 127.0.0.i, used both to listen and
        /// to dial its peers, so firewall rules between addresses can partition nodes (ports
        /// are kept).
        #[arg(long)]
        distinct_addrs: bool,
        /// Turn the autoscaler on with the local provisioner: nodes are added under load and
        /// drained and stopped when it passes (`[autoscale]` sets the targets and windows).
        #[arg(long)]
        autoscale: bool,
        /// Run every link over mutual TLS: makes a CA and a certificate per node and for
        /// clients in DIR/tls (once), and turns `[tls]` on in DIR/cluster.toml.
        #[arg(long)]
        tls: bool,
    },
    /// Show each launched node: id, address, pid, status.
    Status {
        /// Data folder of the launched cluster.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop every launched node.
    Down {
        /// Data folder of the launched cluster.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Start one more node on the next free port, join it and wait until it holds its share.
    Add {
        /// Data folder of the launched cluster.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Hand a launched node's partitions and hints off, then stop it.
    Remove {
        /// The node to remove.
        id: String,
        /// Data folder of the launched cluster.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Stage a membership change, show the plan, commit it, or follow its transfers.
    #[command(flatten)]
    Change(ringkv::console::membership::ChangeCmd),
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Node { node, addr, join } = &cli.command {
        init_tracing("info,ractor_cluster=error,ractor=warn");
        // The node's settings come first: they choose how many worker threads its runtime gets.
        let (settings, workers, autoscale) = match ClusterConfig::load(&cli.config).and_then(|c| {
            let settings = c.node_settings_for(node, *addr, *join)?;
            let autoscale = AutoscaleSetup {
                node_id: node.clone(),
                addr: settings.addr,
                section: c.autoscale.clone(),
                config_path: cli.config.clone(),
                data_dir: c.cluster.data_dir.clone(),
            };
            Ok((settings, c.node.worker_threads, autoscale))
        }) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            rt.worker_threads(workers);
        }
        return match rt.enable_all().build() {
            Ok(rt) => rt.block_on(run_node(node, settings, autoscale)),
            Err(e) => fail(format!("cannot start the runtime: {e}")),
        };
    }
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run_command(cli)),
        Err(e) => fail(format!("cannot start the runtime: {e}")),
    }
}

async fn run_command(cli: Cli) -> ExitCode {
    match cli.command {
        Cmd::Node { .. } => unreachable!("nodes run on their own runtime"),
        Cmd::Cluster { action } => {
            init_tracing("warn,ractor_cluster=error");
            run_cluster(&cli.config, action).await
        }
        Cmd::Certs { dir, ips, ids } => {
            let issued = ringkv::certs::Authority::open_or_create(&dir).and_then(|ca| {
                for id in &ids {
                    let (crt, key) = ca.issue(id, &ips)?;
                    println!("{id}: {} {}", crt.display(), key.display());
                }
                Ok(ca.ca_path())
            });
            match issued {
                Ok(ca) => {
                    println!("CA: {}", ca.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Console { command, json } => {
            init_tracing("warn,ractor_cluster=error");
            ringkv::console::run(&cli.config, command, json).await
        }
        cmd => {
            // One-shot output piped into `head` and the like should end quietly, as Unix tools
            // do; nodes keep Rust's default so a vanished launcher cannot kill them.
            // SAFETY: restoring the default disposition of SIGPIPE before any thread writes.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            init_tracing("warn,ractor_cluster=error");
            run_client(&cli.config, cmd).await
        }
    }
}

async fn run_node(
    node: &str,
    settings: ringkv_actors::settings::NodeSettings,
    autoscale: AutoscaleSetup,
) -> ExitCode {
    let addr = settings.addr;
    // A provisioner that cannot be built stops the node before it serves.
    if autoscale.section.enabled
        && let Err(e) = ringkv::autoscale::service::provisioner(&autoscale)
    {
        return fail(e);
    }
    let mut running = match Node::start(settings).await {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    if let Err(e) = ringkv::autoscale::service::start(autoscale).await {
        return fail(e);
    }
    println!("ringkv node {node} listening on {addr}");
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot install a SIGTERM handler: {e}")),
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = running.stopped() => return fail("node stopped after a core actor failed; see the log above"),
    }
    match running.shutdown(Duration::from_secs(60)).await {
        Ok(()) => {
            println!("ringkv node {node} stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn default_data_dir(config: &Path, given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        ClusterConfig::load(config)
            .map(|c| c.cluster.data_dir)
            .unwrap_or_else(|_| PathBuf::from("data"))
    })
}

async fn run_cluster(config: &Path, action: ClusterCmd) -> ExitCode {
    match action {
        ClusterCmd::Up {
            nodes,
            data_dir,
            base_port,
            detach,
            distinct_addrs,
            autoscale,
            tls,
        } => {
            let opts = UpOptions {
                config: config.to_path_buf(),
                nodes,
                data_dir,
                base_port,
                detach,
                distinct_addrs,
                autoscale,
                tls,
            };
            match launcher::up(opts).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        ClusterCmd::Status { data_dir, json } => {
            let dir = default_data_dir(config, data_dir);
            match launcher::status(&dir).await {
                Ok(nodes) if json => {
                    println!("{}", json!({ "nodes": nodes }));
                    ExitCode::SUCCESS
                }
                Ok(nodes) => {
                    for n in nodes {
                        let ring = match (n.epoch, &n.stage) {
                            (Some(e), Some(s)) => format!("epoch {e} {s}"),
                            _ => "-".into(),
                        };
                        println!(
                            "{:<8} {:<22} pid {:<8} {:<13} {ring}",
                            n.id, n.addr, n.pid, n.status
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        ClusterCmd::Down { data_dir } => {
            match launcher::down(&default_data_dir(config, data_dir)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        ClusterCmd::Add { data_dir } => {
            match launcher::add(&default_data_dir(config, data_dir)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        ClusterCmd::Remove { id, data_dir } => {
            match launcher::remove(&default_data_dir(config, data_dir), &id).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        ClusterCmd::Change(cmd) => match connect(config).await {
            Ok(client) => ringkv::console::membership::run_cli(&client, cmd).await,
            Err(e) => fail(e),
        },
    }
}

fn text_or_base64(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => {
            json!({ "base64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes) })
        }
    }
}

fn options(common: &OneShot, context: Option<&str>) -> Result<RequestOptions, KvError> {
    Ok(RequestOptions {
        context: context.map(Context::from_base64).transpose()?,
        timeout: common.timeout_ms.map(Duration::from_millis),
        r: common.r,
        w: common.w,
        via: common.via.clone(),
    })
}

async fn connect(config: &Path) -> Result<Client, KvError> {
    let cfg = ClientConfig::from_file(config)?;
    Client::connect(cfg).await
}

async fn run_client(config: &Path, cmd: Cmd) -> ExitCode {
    if let Cmd::Bench {
        target: Some(t), ..
    } = &cmd
    {
        let addr = match bench::resp::parse_target(t) {
            Ok(a) => a,
            Err(e) => return fail(e),
        };
        return run_bench(bench::Target::Resp(addr), cmd).await;
    }
    let client = match connect(config).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match cmd {
        Cmd::Put {
            key,
            value,
            context,
            common,
        } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
                    return fail(format!("cannot read the value from standard input: {e}"));
                }
                buf
            } else {
                value.into_bytes()
            };
            let result = match options(&common, context.as_deref()) {
                Ok(o) => client.put_with(&key, &value, &o).await,
                Err(e) => Err(e),
            };
            written(result, common.json)
        }
        Cmd::Delete {
            key,
            context,
            common,
        } => {
            let result = match options(&common, context.as_deref()) {
                Ok(o) => client.delete_with(&key, &o).await,
                Err(e) => Err(e),
            };
            written(result, common.json)
        }
        Cmd::Get { key, common } => {
            let result = match options(&common, None) {
                Ok(o) => client.get_with(&key, &o).await,
                Err(e) => Err(e),
            };
            match result {
                Err(e) => fail(e),
                Ok(r) => {
                    if common.json {
                        let values: Vec<_> = r.values.iter().map(|v| text_or_base64(v)).collect();
                        println!(
                            "{}",
                            json!({ "key": key, "found": r.found(), "values": values, "context": r.context.to_base64() })
                        );
                    } else {
                        for v in &r.values {
                            println!("{}", String::from_utf8_lossy(v));
                        }
                        if r.values.len() > 1 {
                            eprintln!(
                                "note: {} concurrent versions (siblings); resolve with put --context from get --json",
                                r.values.len()
                            );
                        }
                    }
                    if r.found() {
                        ExitCode::SUCCESS
                    } else {
                        if !common.json {
                            eprintln!("not found: {key}");
                        }
                        ExitCode::from(1)
                    }
                }
            }
        }
        cmd @ Cmd::Bench { .. } => run_bench(bench::Target::Sdk(client), cmd).await,
        Cmd::Node { .. } | Cmd::Cluster { .. } | Cmd::Console { .. } | Cmd::Certs { .. } => {
            unreachable!("handled in main")
        }
    }
}

fn written(result: Result<Context, KvError>, json: bool) -> ExitCode {
    match result {
        Ok(ctx) => {
            if json {
                println!("{}", json!({ "ok": true, "context": ctx.to_base64() }));
            } else {
                println!("OK");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn run_bench(target: bench::Target, cmd: Cmd) -> ExitCode {
    let Cmd::Bench {
        workload,
        keys,
        value_size,
        concurrency,
        duration,
        distribution,
        json,
        progress,
        no_load,
        rate,
        ..
    } = cmd
    else {
        unreachable!("only bench commands come here")
    };
    let opts = BenchOptions {
        workload,
        keys,
        value_size,
        concurrency,
        duration: Duration::from_secs(duration),
        distribution,
        progress,
        load: !no_load,
        rate,
    };
    match bench::run_on(&target, &opts).await {
        Ok(report) if json => {
            println!("{}", serde_json::to_string(&report).unwrap());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
