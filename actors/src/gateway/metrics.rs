//! `GET /metrics`: each node can serve its figures in the Prometheus text format (`[metrics]`).
//! A scrape renders the request counters of [`crate::metrics`] and reads the gauges the node
//! already keeps: vnode states, hints, commit-log fsyncs, anti-entropy repairs, transfers,
//! the ring, and the CPU, memory, disk and load figures the autoscaler uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::tls::Tls;

use crate::context::NodeContext;
use crate::metrics::Exposition;
use crate::node::resources::ResourceSampler;
use crate::protocol::VnodeHealth;
use crate::storage::commit_log::CommitLog;

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// A scraper that sends nothing is dropped after this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the listener; the error names the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))
}

/// What a scrape reads besides the context.
struct Sources {
    ctx: Arc<NodeContext>,
    log: CommitLog,
    resources: Mutex<ResourceSampler>,
}

/// Serves scrapes until the task is aborted, over `tls` when given.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<NodeContext>,
    log: CommitLog,
    dir: PathBuf,
    tls: Option<Arc<Tls>>,
) {
    let sources = Arc::new(Sources {
        ctx,
        log,
        resources: Mutex::new(ResourceSampler::new(&dir)),
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (sources, tls) = (sources.clone(), tls.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(READ_TIMEOUT, async {
                match tls {
                    None => answer(stream, &sources).await,
                    Some(tls) => match tls.accept_open(stream).await {
                        Ok(stream) => answer(stream, &sources).await,
                        Err(_) => Ok(()),
                    },
                }
            })
            .await;
        });
    }
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    sources: &Sources,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(sources),
        ),
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "ringkv: metrics at /metrics\n".to_string(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// The whole exposition for one scrape.
fn render(s: &Sources) -> String {
    let ctx = &s.ctx;
    let mut e = Exposition::default();
    ctx.metrics.render(&mut e);
    e.single(
        "ringkv_requests_in_flight",
        "gauge",
        "Client requests being coordinated now.",
        ctx.stats.in_flight() as f64,
    );
    e.single(
        "ringkv_requests_refused_total",
        "counter",
        "Client requests refused as Overloaded before they were coordinated.",
        ctx.stats.refused_total() as f64,
    );
    let report = ctx.table.report();
    e.family("ringkv_vnodes", "gauge", "Vnodes on this node, by state.");
    for (state, h) in [
        ("starting", VnodeHealth::Starting),
        ("serving", VnodeHealth::Serving),
        ("failed", VnodeHealth::Failed),
    ] {
        let n = report.iter().filter(|v| v.health == h).count();
        e.sample("ringkv_vnodes", &[("state", state)], n as f64);
    }
    e.single(
        "ringkv_vnode_mailbox_messages",
        "gauge",
        "Messages queued in this node's vnode mailboxes.",
        ctx.table.mailbox_depth() as f64,
    );
    e.single(
        "ringkv_commit_log_fsyncs_total",
        "counter",
        "fdatasync calls on the commit log.",
        s.log.syncs() as f64,
    );
    e.single(
        "ringkv_hints_pending",
        "gauge",
        "Hints this node keeps for replicas that were down.",
        ctx.hints.len().unwrap_or(0) as f64,
    );
    e.single(
        "ringkv_hints_delivered_total",
        "counter",
        "Hints handed back to their owners.",
        ctx.repair.hints_delivered.load(Ordering::Relaxed) as f64,
    );
    let repaired: u64 = ctx
        .table
        .local()
        .into_iter()
        .map(|p| ctx.repair.aae.of(p).keys_repaired)
        .sum();
    e.single(
        "ringkv_aae_keys_repaired",
        "gauge",
        "Keys anti-entropy repaired in the partitions this node holds now.",
        repaired as f64,
    );
    e.single(
        "ringkv_transfer_received_bytes_total",
        "counter",
        "Bytes of partitions streamed into this node by ownership handoff.",
        ctx.transfers.received_bytes.load(Ordering::Relaxed) as f64,
    );
    let lines = ctx.transfers.board.lines();
    e.family(
        "ringkv_transfers",
        "gauge",
        "Partitions streaming into this node, by state.",
    );
    for state in ["waiting", "streaming", "stalled", "done"] {
        let n = lines.iter().filter(|l| l.state == state).count();
        e.sample("ringkv_transfers", &[("state", state)], n as f64);
    }
    let placement = ctx.ring.load();
    e.single(
        "ringkv_ring_epoch",
        "gauge",
        "Epoch of the ring this node routes on.",
        placement.epoch as f64,
    );
    e.single(
        "ringkv_ring_members",
        "gauge",
        "Members of that ring.",
        placement.members.len() as f64,
    );
    let usage = s
        .resources
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .sample(ctx.stats.refused_total());
    let (ops, _) = ctx.stats.summary();
    for (name, help, v) in [
        (
            "ringkv_cpu_usage_ratio",
            "CPU time over the cores this node's runtime can use (an autoscaler signal).",
            usage.cpu_pct / 100.0,
        ),
        (
            "ringkv_memory_usage_ratio",
            "Resident memory over the memory limit (an autoscaler signal).",
            usage.mem_pct / 100.0,
        ),
        (
            "ringkv_disk_usage_ratio",
            "Used space of the data folder's file system (an autoscaler signal).",
            usage.disk_pct / 100.0,
        ),
        (
            "ringkv_requests_per_second",
            "Client requests coordinated per second over the last window (an autoscaler signal).",
            ops,
        ),
        (
            "ringkv_requests_refused_per_second",
            "Overloaded refusals per second since the last scrape (an autoscaler signal).",
            usage.refused_per_sec,
        ),
    ] {
        e.single(name, "gauge", help, v);
    }
    e.finish()
}
