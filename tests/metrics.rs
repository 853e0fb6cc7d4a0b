//! `GET /metrics` on real nodes: the counters match the requests a client made, the gauges
//! describe the node, and the text is in the Prometheus format.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestCluster;

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_every_request_and_describes_the_node() {
    let extra = "[metrics]\nenabled = true\nport_offset = 2000\n\n[repair]\naae_interval_ms = 0\n";
    let c = TestCluster::start_replicated("mx", 3, 3, extra).await;
    let client = c.client().await;
    let (puts, gets, dels) = (40, 25, 5);
    for i in 0..puts {
        client.put(&format!("k{i}"), "v").await.unwrap();
    }
    for i in 0..gets {
        assert!(client.get(&format!("k{i}")).await.unwrap().found());
    }
    for i in 0..dels {
        client.delete(&format!("k{i}")).await.unwrap();
    }
    let addrs: Vec<SocketAddr> = c
        .addrs
        .iter()
        .map(|a| SocketAddr::new(a.ip(), a.port() + 2000))
        .collect();
    let sum = |series: &str| -> f64 {
        addrs
            .iter()
            .map(|a| value(&get(*a, "/metrics").1, series))
            .sum()
    };
    assert_eq!(
        sum("ringkv_requests_total{op=\"put\",outcome=\"ok\"}"),
        puts as f64
    );
    assert_eq!(
        sum("ringkv_requests_total{op=\"get\",outcome=\"ok\"}"),
        gets as f64
    );
    assert_eq!(
        sum("ringkv_requests_total{op=\"delete\",outcome=\"ok\"}"),
        dels as f64
    );
    assert_eq!(
        sum("ringkv_request_duration_seconds_count{op=\"put\"}"),
        puts as f64
    );
    assert_eq!(
        sum("ringkv_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"}"),
        gets as f64
    );

    let (head, body) = get(addrs[0], "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(value(&body, "ringkv_vnodes{state=\"serving\"}"), 16.0);
    assert_eq!(value(&body, "ringkv_ring_members"), 3.0);
    assert!(value(&body, "ringkv_commit_log_fsyncs_total") > 0.0);
    assert!(
        value(
            &body,
            "ringkv_replica_messages_received_total{kind=\"write\"}"
        ) > 0.0
    );
    assert!(
        value(
            &body,
            "ringkv_replica_messages_received_total{kind=\"heartbeat\"}"
        ) > 0.0
    );
    let disk = value(&body, "ringkv_disk_usage_ratio");
    assert!(disk > 0.0 && disk <= 1.0, "{disk}");
    // Every family is declared before its samples, as the format requires.
    let mut declared = std::collections::HashSet::new();
    for l in body.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            declared.insert(rest.split(' ').next().unwrap().to_string());
        } else if !l.starts_with('#') && !l.is_empty() {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "{name} has no # TYPE before it");
        }
    }
    let (head, _) = get(addrs[0], "/nothing");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}
