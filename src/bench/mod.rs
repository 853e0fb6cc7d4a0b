//! `ringkv bench`: throughput and latency through the SDK, with `ping` as the transport ceiling,
//! or through the Redis protocol ([`resp`]) against a ringkv node or a redis-server.

pub mod resp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

use crate::client::Client;

/// What each operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Gets of loaded keys.
    Read,
    /// Blind puts of loaded keys.
    Update,
    /// This percentage of gets, the rest puts.
    Mixed(u8),
    /// Bare typed-message round trips.
    Ping,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Workload::Read),
            "update" => Ok(Workload::Update),
            "ping" => Ok(Workload::Ping),
            _ => match s.strip_prefix("mixed:").map(str::parse::<u8>) {
                Some(Ok(p)) if p <= 100 => Ok(Workload::Mixed(p)),
                _ => Err(format!(
                    "unknown workload '{s}': use read, update, ping or mixed:<read percent 0-100>"
                )),
            },
        }
    }
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Zipfian (s = 0.99): a few hot keys.
    Zipfian,
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// What each operation does.
    pub workload: Workload,
    /// Key space size.
    pub keys: u64,
    /// Value size in bytes.
    pub value_size: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Measured duration.
    pub duration: Duration,
    /// Key popularity.
    pub distribution: KeyDistribution,
    /// Print ops/s, errors and p99 every second while running.
    pub progress: bool,
    /// Write every key before a read or mixed run.
    pub load: bool,
    /// Total operations per second to start, spread evenly over the requests in flight; `None`
    /// starts the next one as soon as the last returns.
    pub rate: Option<f64>,
}

/// When each worker starts its operations at a fixed rate: `period` apart, worker `t` of `n`
/// first at `t / n` of a period after `start`, so the workers' starts interleave.
fn schedule(start: Instant, period: Duration, t: usize, n: usize) -> Instant {
    start + period.mul_f64(t as f64 / n.max(1) as f64)
}

/// Per-second figures shared by the workers and the progress printer.
struct Interval {
    hist: std::sync::Mutex<Histogram<u64>>,
    ops: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

impl Interval {
    fn new() -> Interval {
        Interval {
            hist: std::sync::Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 2).unwrap()),
            ops: Default::default(),
            errors: Default::default(),
        }
    }

    fn record(&self, micros: u64, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.hist.lock().unwrap().saturating_record(micros);
        if ok {
            self.ops.fetch_add(1, Relaxed)
        } else {
            self.errors.fetch_add(1, Relaxed)
        };
    }

    /// Takes and resets this second's figures: (ops, errors, p99 ms).
    fn take(&self) -> (u64, u64, f64) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut h = self.hist.lock().unwrap();
        let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
        h.reset();
        (self.ops.swap(0, Relaxed), self.errors.swap(0, Relaxed), p99)
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Workload name.
    pub workload: String,
    /// Requests in flight.
    pub concurrency: usize,
    /// Operations per second asked for (`None`: as fast as they return).
    pub target_rate: Option<f64>,
    /// Successful operations.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Measured seconds.
    pub seconds: f64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Slowest operation, ms.
    pub max_ms: f64,
    /// Keys loaded before the run (0 when nothing was loaded).
    pub loaded_keys: u64,
    /// Load phase rate, keys/s.
    pub load_ops_per_sec: f64,
    /// First few distinct error messages.
    pub error_samples: Vec<String>,
}

/// How long a load task pauses after a failed request.
const ERROR_PAUSE: Duration = Duration::from_millis(5);

fn key_name(i: u64) -> Vec<u8> {
    format!("bench-{i:012}").into_bytes()
}

/// What a benchmark drives.
#[derive(Clone)]
pub enum Target {
    /// The cluster, through the SDK.
    Sdk(Client),
    /// A server speaking RESP (a ringkv node's Redis port, or redis-server).
    Resp(std::net::SocketAddr),
}

/// One worker's way to the target.
enum Conn {
    Sdk(Client),
    Resp(resp::Conn),
}

impl Conn {
    async fn open(target: &Target) -> Result<Conn, String> {
        Ok(match target {
            Target::Sdk(c) => Conn::Sdk(c.clone()),
            Target::Resp(a) => Conn::Resp(resp::Conn::connect(*a).await?),
        })
    }

    async fn ping(&mut self) -> Result<(), String> {
        match self {
            Conn::Sdk(c) => c.ping(None).await.map(|_| ()).map_err(|e| e.to_string()),
            Conn::Resp(r) => r.call(&[b"PING"]).await,
        }
    }

    async fn get(&mut self, key: &[u8]) -> Result<(), String> {
        match self {
            Conn::Sdk(c) => c.get(key).await.map(|_| ()).map_err(|e| e.to_string()),
            Conn::Resp(r) => r.call(&[b"GET", key]).await,
        }
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match self {
            Conn::Sdk(c) => c
                .put(key, value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Conn::Resp(r) => r.call(&[b"SET", key, value]).await,
        }
    }
}

impl Target {
    /// Where worker tasks run: the SDK's own runtime, so a request reaches its socket without
    /// waking a thread of another runtime (on a small machine that cost more CPU than the
    /// cluster spent on a ping); the current runtime for RESP.
    fn runtime(&self) -> tokio::runtime::Handle {
        match self {
            Target::Sdk(c) => c.runtime(),
            Target::Resp(_) => tokio::runtime::Handle::current(),
        }
    }
}

/// Runs a benchmark against a connected client.
pub async fn run(client: &Client, opts: &BenchOptions) -> Result<BenchReport, String> {
    run_on(&Target::Sdk(client.clone()), opts).await
}

/// Runs a benchmark against `target`.
pub async fn run_on(target: &Target, opts: &BenchOptions) -> Result<BenchReport, String> {
    if opts.keys == 0 || opts.concurrency == 0 {
        return Err("--keys and --concurrency must be at least 1".into());
    }
    if opts.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("--rate must be a positive number of operations per second".into());
    }
    let value: Arc<Vec<u8>> = Arc::new((0..opts.value_size).map(|i| (i % 251) as u8).collect());
    let needs_load = opts.load && matches!(opts.workload, Workload::Read | Workload::Mixed(_));
    let (loaded_keys, load_rate) = if needs_load {
        load(target, opts, &value).await?
    } else {
        (0, 0.0)
    };

    let started = Instant::now();
    let end = started + opts.duration;
    let interval = Arc::new(Interval::new());
    let printer = opts.progress.then(|| {
        let interval = interval.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut second = 0;
            while Instant::now() < end {
                tick.tick().await;
                second += 1;
                let (ops, errors, p99) = interval.take();
                eprintln!("t={second:>3}s  {ops:>7} ops/s  {errors:>4} errors  p99 {p99:.2} ms");
            }
        })
    });
    let runtime = target.runtime();
    let mut conns = Vec::new();
    for _ in 0..opts.concurrency {
        conns.push(Conn::open(target).await?);
    }
    let mut tasks = Vec::new();
    for (t, mut conn) in conns.into_iter().enumerate() {
        let value = value.clone();
        let opts = opts.clone();
        let interval = interval.clone();
        tasks.push(runtime.spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut rng = SmallRng::seed_from_u64(t as u64 * 7919 + 1);
            let zipf = Zipf::new(opts.keys as f64, 0.99).unwrap();
            let (mut ok, mut errs, mut samples) = (0u64, 0u64, Vec::<String>::new());
            // At a fixed rate, an operation started late counts from when it was due, so a
            // stall shows in the latencies of every operation it delayed, not of one.
            let period = opts
                .rate
                .map(|r| Duration::from_secs_f64(opts.concurrency as f64 / r));
            let mut due = period.map(|p| schedule(started, p, t, opts.concurrency));
            while Instant::now() < end {
                let mut this_due = None;
                if let (Some(at), Some(p)) = (due.as_mut(), period) {
                    if *at >= end {
                        break;
                    }
                    // Behind schedule, the operation counts from when it was due; ahead, from
                    // when the timer (a millisecond coarse) woke this worker.
                    if Instant::now() < *at {
                        tokio::time::sleep_until((*at).into()).await;
                    } else {
                        this_due = Some(*at);
                    }
                    *at += p;
                }
                let k = match opts.distribution {
                    KeyDistribution::Uniform => rng.random_range(0..opts.keys),
                    KeyDistribution::Zipfian => zipf.sample(&mut rng) as u64 - 1,
                };
                let key = key_name(k);
                let read = match opts.workload {
                    Workload::Read => true,
                    Workload::Update | Workload::Ping => false,
                    Workload::Mixed(p) => rng.random_range(0..100u8) < p,
                };
                let t0 = this_due.unwrap_or_else(Instant::now);
                let r = match opts.workload {
                    Workload::Ping => conn.ping().await,
                    _ if read => conn.get(&key).await,
                    _ => conn.put(&key, value.as_slice()).await,
                };
                let micros = t0.elapsed().as_micros().max(1) as u64;
                hist.saturating_record(micros);
                if opts.progress {
                    interval.record(micros, r.is_ok());
                }
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        // A request can fail at once (no node reachable); retrying at once
                        // would spin the client runtime's one thread and starve the re-dials
                        // that end the outage.
                        tokio::time::sleep(ERROR_PAUSE).await;
                        errs += 1;
                        let m = e;
                        if samples.len() < 5 && !samples.contains(&m) {
                            samples.push(m);
                        }
                    }
                }
            }
            (hist, ok, errs, samples)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut ops, mut errors, mut samples) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let (h, ok, errs, s) = t.await.map_err(|e| format!("bench task failed: {e}"))?;
        hist.add(h).expect("same bounds");
        ops += ok;
        errors += errs;
        for m in s {
            if samples.len() < 5 && !samples.contains(&m) {
                samples.push(m);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(p) = printer {
        p.abort();
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(BenchReport {
        workload: match opts.workload {
            Workload::Read => "read".into(),
            Workload::Update => "update".into(),
            Workload::Ping => "ping".into(),
            Workload::Mixed(p) => format!("mixed:{p}"),
        },
        concurrency: opts.concurrency,
        target_rate: opts.rate,
        ops,
        errors,
        seconds,
        ops_per_sec: ops as f64 / seconds,
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        loaded_keys,
        load_ops_per_sec: load_rate,
        error_samples: samples,
    })
}

/// Writes every key once, `concurrency` at a time; fails on the first error.
async fn load(
    target: &Target,
    opts: &BenchOptions,
    value: &Arc<Vec<u8>>,
) -> Result<(u64, f64), String> {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks: Vec<tokio::task::JoinHandle<Result<(), String>>> = Vec::new();
    for _ in 0..opts.concurrency {
        let mut conn = Conn::open(target).await?;
        let (value, next, keys) = (value.clone(), next.clone(), opts.keys);
        tasks.push(target.runtime().spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= keys {
                    return Ok(());
                }
                conn.put(&key_name(i), value.as_slice())
                    .await
                    .map_err(|e| format!("loading key {i} failed: {e}"))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((opts.keys, opts.keys as f64 / secs))
}

impl BenchReport {
    /// Human-readable lines.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.loaded_keys > 0 {
            s += &format!(
                "loaded {} keys at {:.0} ops/s\n",
                self.loaded_keys, self.load_ops_per_sec
            );
        }
        let asked = self
            .target_rate
            .map_or_else(String::new, |r| format!(" (asked {r:.0}/s)"));
        s += &format!(
            "{} c={}{asked}: {:.0} ops/s ({} ops, {} errors in {:.1} s)\nlatency ms: p50 {:.3}  p95 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            self.workload,
            self.concurrency,
            self.ops_per_sec,
            self.ops,
            self.errors,
            self.seconds,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms
        );
        for e in &self.error_samples {
            s += &format!("\nerror: {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_workers_interleave_within_one_period() {
        let start = Instant::now();
        let p = Duration::from_millis(8);
        let starts: Vec<_> = (0..4).map(|t| schedule(start, p, t, 4)).collect();
        assert_eq!(starts[0], start);
        assert_eq!(starts[2] - start, Duration::from_millis(4));
        assert!(starts.windows(2).all(|w| w[0] < w[1]) && starts[3] < start + p);
    }
}
