//! A read-then-write workload over a few overlapping keys, recording every write attempt for
//! [`super::checker`].
//!
//! Each writer task repeats: pick a key, `get` it, then `put` a value unique to the run (or,
//! with probability `delete_share`, delete a key the read found) carrying the read's context.
//! A failed read skips the write; a write that is not acknowledged is recorded as
//! [`Outcome::Unknown`] whatever the error, since a timeout or a lost connection leaves it
//! undecided. Request errors never stop a writer, so it keeps going while nodes die.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringkv::{Client, KvError, RequestOptions};
use ringkv_actors::core::quorum::Consistency;

use super::checker::{Attempt, FinalState, History, Outcome};

/// Which node each request goes through.
#[derive(Debug, Clone, Default)]
pub enum Route {
    /// The client chooses (a key's first reachable replica for writes, failing over).
    #[default]
    Client,
    /// Writer `i` sends everything through `nodes[i % nodes.len()]`.
    PerWriter(Vec<String>),
    /// Op `j` of writer `i` goes through `nodes[(i + j) % nodes.len()]`.
    RoundRobin(Vec<String>),
}

/// What to run. A writer stops at the first of `ops_per_writer`, `duration` and `stop`
/// (with neither of the first two set, only `stop` ends the run).
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// Concurrent writer tasks; keep at most `conflicts.max_siblings`, or pruned siblings
    /// (a documented loss) show up as lost writes.
    pub writers: usize,
    /// Keys written, named `<key_prefix><k>` for k in 0..keys.
    pub keys: usize,
    /// Prefix of the key names.
    pub key_prefix: String,
    /// Prefix of every value (and delete id), to keep the values of several runs apart.
    pub tag: String,
    /// Ops (a read and, if it succeeds, a write) each writer starts at most.
    pub ops_per_writer: Option<usize>,
    /// How long writers keep starting ops.
    pub duration: Option<Duration>,
    /// Set to stop the writers (each finishes its current op).
    pub stop: Arc<AtomicBool>,
    /// Read consistency (`None`: the cluster default).
    pub r: Option<Consistency>,
    /// Write consistency (`None`: the cluster default).
    pub w: Option<Consistency>,
    /// Per-request timeout (`None`: the client's).
    pub timeout: Option<Duration>,
    /// Write without the read's context; the read-set is still recorded as what the writer
    /// meant to supersede, so this is a negative control that loses writes.
    pub blind: bool,
    /// Which node each request goes through.
    pub route: Route,
    /// Probability that an op whose read found values deletes the key instead of putting.
    pub delete_share: f64,
    /// Seed of the writers' key and op choices.
    pub seed: u64,
    /// Least time between the starts of a writer's ops (`None`: back to back), so a test can
    /// bound the load the workload itself puts on the cluster, whatever the machine's speed.
    pub pace: Option<Duration>,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        WorkloadOptions {
            writers: 4,
            keys: 4,
            key_prefix: "fw-".into(),
            tag: String::new(),
            ops_per_writer: None,
            duration: Some(Duration::from_secs(3)),
            stop: Arc::new(AtomicBool::new(false)),
            r: None,
            w: None,
            timeout: None,
            blind: false,
            route: Route::Client,
            delete_share: 0.0,
            seed: 1,
            pace: None,
        }
    }
}

impl WorkloadOptions {
    /// Every key the workload may write.
    pub fn key_names(&self) -> Vec<String> {
        (0..self.keys)
            .map(|k| format!("{}{k}", self.key_prefix))
            .collect()
    }
}

/// Tallies of a run.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    /// Ops started.
    pub ops: usize,
    /// Reads that failed (their op wrote nothing).
    pub read_errors: usize,
    /// Writes acknowledged.
    pub acked: usize,
    /// Writes not acknowledged (outcome unknown).
    pub unknown: usize,
    /// Delete attempts.
    pub deletes: usize,
    /// Request errors by kind (`Timeout`, `Unavailable`, ...), reads and writes together.
    pub errors: BTreeMap<String, usize>,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.ops += other.ops;
        self.read_errors += other.read_errors;
        self.acked += other.acked;
        self.unknown += other.unknown;
        self.deletes += other.deletes;
        for (k, n) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += n;
        }
    }

    fn error(&mut self, e: &KvError) {
        let text = format!("{e:?}");
        let kind = text
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or("");
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Every write attempt.
    pub history: History,
    /// Tallies.
    pub counts: Counts,
}

/// After a failed request a writer pauses this long, so a cluster refusing requests at once
/// (a node down, `Unavailable`) does not turn the writers into busy loops on 2 cores.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Runs the workload to completion and returns its history.
pub async fn run(client: &Client, opts: &WorkloadOptions) -> Run {
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let tasks: Vec<_> = (0..opts.writers)
        .map(|i| {
            let (client, opts) = (client.clone(), opts.clone());
            tokio::spawn(async move { writer(client, opts, i, deadline).await })
        })
        .collect();
    let mut out = Run::default();
    for t in tasks {
        let (attempts, counts) = t.await.expect("writer task panicked");
        out.history.attempts.extend(attempts);
        out.counts.add(&counts);
    }
    out
}

async fn writer(
    client: Client,
    opts: WorkloadOptions,
    i: usize,
    deadline: Option<Instant>,
) -> (Vec<Attempt>, Counts) {
    let mut rng = StdRng::seed_from_u64(opts.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
    let keys = opts.key_names();
    let mut attempts = Vec::new();
    let mut counts = Counts::default();
    let mut next = Instant::now();
    for seq in 0.. {
        if let Some(pace) = opts.pace {
            tokio::time::sleep_until(next.into()).await;
            next = Instant::now().max(next + pace);
        }
        if opts.ops_per_writer.is_some_and(|n| seq >= n)
            || deadline.is_some_and(|d| Instant::now() >= d)
            || opts.stop.load(Ordering::Relaxed)
        {
            break;
        }
        counts.ops += 1;
        let key = &keys[rng.random_range(0..keys.len())];
        let via = match &opts.route {
            Route::Client => None,
            Route::PerWriter(nodes) => Some(nodes[i % nodes.len()].clone()),
            Route::RoundRobin(nodes) => Some(nodes[(i + seq) % nodes.len()].clone()),
        };
        let read_opts = RequestOptions {
            timeout: opts.timeout,
            r: opts.r,
            via: via.clone(),
            ..Default::default()
        };
        let read = match client.get_with(key, &read_opts).await {
            Ok(read) => read,
            Err(e) => {
                counts.read_errors += 1;
                counts.error(&e);
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        let id = format!("{}w{i}-{seq}", opts.tag);
        let delete = read.found() && rng.random_bool(opts.delete_share);
        let write_opts = RequestOptions {
            context: (!opts.blind).then(|| read.context.clone()),
            timeout: opts.timeout,
            w: opts.w,
            via,
            ..Default::default()
        };
        let result = if delete {
            counts.deletes += 1;
            client.delete_with(key, &write_opts).await
        } else {
            client.put_with(key, &id, &write_opts).await
        };
        let (outcome, error) = match result {
            Ok(_) => {
                counts.acked += 1;
                (Outcome::Acked, None)
            }
            Err(e) => {
                counts.unknown += 1;
                counts.error(&e);
                (Outcome::Unknown, Some(e.to_string()))
            }
        };
        attempts.push(Attempt {
            key: key.clone(),
            value: (!delete).then(|| id.clone()),
            id,
            read: texts(&read.values),
            outcome,
            error,
        });
        if outcome == Outcome::Unknown {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    (attempts, counts)
}

/// Reads every key with r=all (through any node), retrying each until it succeeds; panics if
/// some key cannot be read within `within`. Call it once the cluster has healed.
pub async fn read_final(client: &Client, keys: &[String], within: Duration) -> FinalState {
    let end = Instant::now() + within;
    let opts = RequestOptions {
        r: Some(Consistency::All),
        ..Default::default()
    };
    let mut state = FinalState::new();
    for key in keys {
        let values = loop {
            match client.get_with(key, &opts).await {
                Ok(read) => break texts(&read.values),
                Err(e) => assert!(
                    Instant::now() < end,
                    "could not read {key} with r=all within {within:?}: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        state.insert(key.clone(), values);
    }
    state
}

/// Values as text (the workload writes ASCII; anything else is shown lossily, as a phantom).
fn texts(values: &[Vec<u8>]) -> BTreeSet<String> {
    values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}
