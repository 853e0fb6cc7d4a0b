//! Client request counters for `stats`: throughput and p99 over the last complete window.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const WINDOW: Duration = Duration::from_secs(5);

struct Windows {
    started: Instant,
    current: Histogram<u64>,
    last: Option<(Duration, Histogram<u64>)>,
}

/// Latency histograms of client requests, rotated every few seconds.
pub struct RequestStats {
    windows: Mutex<Windows>,
    in_flight: AtomicU64,
    /// Requests refused as `Overloaded` since the node started.
    refused: AtomicU64,
    /// p99 of the last complete window, µs, for callers on the hot path.
    last_p99_us: AtomicU64,
}

impl std::fmt::Debug for RequestStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStats").finish()
    }
}

impl Default for RequestStats {
    fn default() -> Self {
        RequestStats {
            windows: Mutex::new(Windows {
                started: Instant::now(),
                current: Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds"),
                last: None,
            }),
            in_flight: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_p99_us: AtomicU64::new(0),
        }
    }
}

impl RequestStats {
    fn rotate(&self, w: &mut Windows) {
        let elapsed = w.started.elapsed();
        if elapsed >= WINDOW {
            let fresh = Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds");
            let done = std::mem::replace(&mut w.current, fresh);
            self.last_p99_us
                .store(done.value_at_quantile(0.99), Ordering::Relaxed);
            w.last = Some((elapsed, done));
            w.started = Instant::now();
        }
    }

    /// Records one finished client request.
    pub fn record(&self, took: Duration) {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        self.rotate(&mut w);
        w.current.saturating_record(took.as_micros().max(1) as u64);
    }

    /// Marks a request as started; the guard marks it finished.
    pub fn start(&self) -> InFlightRequest<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightRequest(self, Instant::now())
    }

    /// p99 latency of the last complete window (zero before the first), without locking.
    pub fn recent_p99(&self) -> Duration {
        Duration::from_micros(self.last_p99_us.load(Ordering::Relaxed))
    }

    /// Counts one request refused as `Overloaded` before it was coordinated.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused as `Overloaded` since the node started.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests being coordinated now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// (requests per second, p99 in ms) over the last complete window.
    pub fn summary(&self) -> (f64, f64) {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        self.rotate(&mut w);
        match &w.last {
            Some((span, h)) => (
                h.len() as f64 / span.as_secs_f64(),
                h.value_at_quantile(0.99) as f64 / 1000.0,
            ),
            None => (0.0, 0.0),
        }
    }
}

/// An in-flight client request; records its latency when dropped.
pub struct InFlightRequest<'a>(&'a RequestStats, Instant);

impl Drop for InFlightRequest<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.record(self.1.elapsed());
    }
}
