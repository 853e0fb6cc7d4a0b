//! Counters for `GET /metrics`: client requests by operation and outcome with latency
//! histograms, replica messages by kind, and the text format Prometheus scrapes
//! ([`Exposition`]). Gauges that other parts already keep (vnode states, hints, transfers, the
//! resource use) are read when a scrape renders them, in `gateway::metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::KvError;

/// A client operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read.
    Get,
    /// A write.
    Put,
    /// A delete.
    Delete,
}

impl Op {
    /// A write's operation: a put, or a delete when it carries no value.
    pub fn of(req: &crate::protocol::PutRequest) -> Op {
        if req.value.is_some() {
            Op::Put
        } else {
            Op::Delete
        }
    }
}

const OPS: [&str; 3] = ["get", "put", "delete"];
const OUTCOMES: [&str; 7] = [
    "ok",
    "timeout",
    "unavailable",
    "overloaded",
    "bad_request",
    "stale_ring",
    "error",
];
/// Upper bounds of the latency buckets, seconds (Prometheus' convention for durations).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const KINDS: [&str; 8] = [
    "read",
    "write",
    "coordinate",
    "heartbeat",
    "anti_entropy",
    "hints",
    "placement",
    "transfer",
];

fn outcome_index(e: Option<&KvError>) -> usize {
    match e {
        None => 0,
        Some(KvError::Timeout) => 1,
        Some(KvError::Unavailable { .. }) => 2,
        Some(KvError::Overloaded) => 3,
        Some(
            KvError::BadRequest(_)
            | KvError::EmptyKey
            | KvError::KeyTooLarge { .. }
            | KvError::PairTooLarge { .. },
        ) => 4,
        Some(KvError::StaleRing { .. }) => 5,
        Some(_) => 6,
    }
}

/// Request and replica-message counters of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; OUTCOMES.len()]; OPS.len()],
    /// Per op: one counter per bucket (not cumulative; summed when rendered) and one past the
    /// last bound.
    latency: [[AtomicU64; BUCKETS.len() + 1]; OPS.len()],
    latency_sum_us: [AtomicU64; OPS.len()],
    replica: [AtomicU64; KINDS.len()],
}

impl Metrics {
    /// Counts one finished client request.
    pub fn request(&self, op: Op, error: Option<&KvError>, took: Duration) {
        let o = op as usize;
        self.requests[o][outcome_index(error)].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(BUCKETS.len());
        self.latency[o][b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us[o].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts one replica message received, by kind (`read`, `write`, `heartbeat`, …).
    pub fn replica(&self, kind: &str) {
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            self.replica[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the request and replica families into `out`.
    pub fn render(&self, out: &mut Exposition) {
        out.family(
            "ringkv_requests_total",
            "counter",
            "Client requests this node coordinated, by operation and outcome.",
        );
        for (o, op) in OPS.iter().enumerate() {
            for (i, outcome) in OUTCOMES.iter().enumerate() {
                let v = self.requests[o][i].load(Ordering::Relaxed);
                out.sample(
                    "ringkv_requests_total",
                    &[("op", op), ("outcome", outcome)],
                    v as f64,
                );
            }
        }
        out.family(
            "ringkv_request_duration_seconds",
            "histogram",
            "Latency of client requests this node coordinated, by operation.",
        );
        for (o, op) in OPS.iter().enumerate() {
            let mut cumulative = 0u64;
            for (b, le) in BUCKETS.iter().enumerate() {
                cumulative += self.latency[o][b].load(Ordering::Relaxed);
                out.sample(
                    "ringkv_request_duration_seconds_bucket",
                    &[("op", op), ("le", &format_float(*le))],
                    cumulative as f64,
                );
            }
            cumulative += self.latency[o][BUCKETS.len()].load(Ordering::Relaxed);
            out.sample(
                "ringkv_request_duration_seconds_bucket",
                &[("op", op), ("le", "+Inf")],
                cumulative as f64,
            );
            let sum = self.latency_sum_us[o].load(Ordering::Relaxed) as f64 / 1e6;
            out.sample("ringkv_request_duration_seconds_sum", &[("op", op)], sum);
            out.sample(
                "ringkv_request_duration_seconds_count",
                &[("op", op)],
                cumulative as f64,
            );
        }
        out.family(
            "ringkv_replica_messages_received_total",
            "counter",
            "Messages from other nodes' coordinators and services, by kind.",
        );
        for (i, kind) in KINDS.iter().enumerate() {
            let v = self.replica[i].load(Ordering::Relaxed);
            out.sample(
                "ringkv_replica_messages_received_total",
                &[("kind", kind)],
                v as f64,
            );
        }
    }
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

/// The Prometheus text exposition format (version 0.0.4), built family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample line; label values are escaped as the format requires.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{k}=\"{v}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_float(value));
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The text to serve.
    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_cumulative_buckets_and_outcomes() {
        let m = Metrics::default();
        m.request(Op::Get, None, Duration::from_micros(300));
        m.request(Op::Get, None, Duration::from_millis(3));
        m.request(Op::Get, Some(&KvError::Timeout), Duration::from_secs(20));
        m.request(
            Op::Put,
            Some(&KvError::Overloaded),
            Duration::from_micros(10),
        );
        m.replica("heartbeat");
        let mut e = Exposition::default();
        m.render(&mut e);
        let text = e.finish();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            line("ringkv_requests_total{op=\"get\",outcome=\"ok\"}"),
            "2"
        );
        assert_eq!(
            line("ringkv_requests_total{op=\"get\",outcome=\"timeout\"}"),
            "1"
        );
        assert_eq!(
            line("ringkv_requests_total{op=\"put\",outcome=\"overloaded\"}"),
            "1"
        );
        assert_eq!(
            line("ringkv_request_duration_seconds_bucket{op=\"get\",le=\"0.0005\"}"),
            "1"
        );
        assert_eq!(
            line("ringkv_request_duration_seconds_bucket{op=\"get\",le=\"0.005\"}"),
            "2"
        );
        assert_eq!(
            line("ringkv_request_duration_seconds_bucket{op=\"get\",le=\"10\"}"),
            "2"
        );
        assert_eq!(
            line("ringkv_request_duration_seconds_bucket{op=\"get\",le=\"+Inf\"}"),
            "3"
        );
        assert_eq!(
            line("ringkv_request_duration_seconds_count{op=\"get\"}"),
            "3"
        );
        assert_eq!(
            line("ringkv_replica_messages_received_total{kind=\"heartbeat\"}"),
            "1"
        );
        assert!(text.contains("# TYPE ringkv_request_duration_seconds histogram"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.sample("x", &[("node", "a\"b\\c\nd")], 1.5);
        assert_eq!(e.finish(), "x{node=\"a\\\"b\\\\c\\nd\"} 1.5\n");
    }
}
