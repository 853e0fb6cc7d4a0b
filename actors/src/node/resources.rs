//! What this node's process uses of its machine: CPU, memory and disk, as percentages, for the
//! autoscaler's signals (`Admin::Stats`). Linux only: read from `/proc`, the cgroup limits
//! and `statvfs`; a figure that cannot be read is reported as 0.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// Samples shorter than this keep the previous rates: a burst of callers would otherwise
/// divide a few clock ticks by a few milliseconds.
const MIN_SAMPLE_SECS: f64 = 0.5;

/// One reading of the node's resource use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time over wall time since the last reading, as a percentage of the cores this
    /// node can keep busy: the machine's (or its cgroup's), or fewer when the node's runtime
    /// has fewer worker threads, so a node whose every worker is busy reads near 100.
    pub cpu_pct: f64,
    /// Resident memory as a percentage of the memory limit (cgroup, else the machine's).
    pub mem_pct: f64,
    /// Used space of the data folder's file system, percent.
    pub disk_pct: f64,
    /// Requests refused as `Overloaded` per second since the last reading.
    pub refused_per_sec: f64,
}

/// Turns cumulative counters into rates between readings.
#[derive(Debug)]
pub struct ResourceSampler {
    data_dir: PathBuf,
    cores: f64,
    last: Option<(Instant, f64, u64)>,
    rates: (f64, f64),
}

impl ResourceSampler {
    /// A sampler for a node whose data lives in `data_dir`.
    pub fn new(data_dir: &Path) -> ResourceSampler {
        let machine = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = tokio::runtime::Handle::try_current()
            .map_or(machine, |h| h.metrics().num_workers().max(1));
        let cores = machine.min(workers) as f64;
        ResourceSampler {
            data_dir: data_dir.to_path_buf(),
            cores,
            last: None,
            rates: (0.0, 0.0),
        }
    }

    /// Reads the counters now; `refused_total` is the node's count of `Overloaded` refusals.
    pub fn sample(&mut self, refused_total: u64) -> Usage {
        let now = Instant::now();
        let cpu = process_cpu_secs().unwrap_or(0.0);
        match self.last {
            Some((at, c, r)) => {
                let span = now.duration_since(at).as_secs_f64();
                if span >= MIN_SAMPLE_SECS {
                    let cpu_pct = ((cpu - c).max(0.0) / span / self.cores * 100.0).min(100.0);
                    let refused = refused_total.saturating_sub(r) as f64 / span;
                    self.rates = (cpu_pct, refused);
                    self.last = Some((now, cpu, refused_total));
                }
            }
            None => self.last = Some((now, cpu, refused_total)),
        }
        Usage {
            cpu_pct: self.rates.0,
            mem_pct: memory_pct().unwrap_or(0.0),
            disk_pct: disk_pct(&self.data_dir).unwrap_or(0.0),
            refused_per_sec: self.rates.1,
        }
    }
}

fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    cpu_ticks(&stat).map(|t| t as f64 / ticks.max(1) as f64)
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based over the whole line).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn memory_pct() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let machine = mem_total_bytes(&meminfo)?;
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| cgroup_limit(&s))
        .map_or(machine, |l| l.min(machine));
    Some(pages as f64 * page as f64 / limit.max(1) as f64 * 100.0)
}

/// `MemTotal` of `/proc/meminfo`, bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A cgroup v2 `memory.max`: a byte count, or `max` for none.
fn cgroup_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

fn disk_pct(dir: &Path) -> Option<f64> {
    let s = crate::storage::disk_guard::fs_stats(dir)?;
    Some(used_pct(s.f_blocks, s.f_bfree, s.f_bavail))
}

/// Used space as `df` reports it: blocks reserved for root count as neither used nor
/// available to us.
fn used_pct(blocks: u64, free: u64, avail: u64) -> f64 {
    let used = blocks.saturating_sub(free);
    let usable = used + avail;
    if usable == 0 {
        0.0
    } else {
        used as f64 / usable as f64 * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_a_name_with_spaces_and_parentheses() {
        let line = "4242 (ringkv (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 370 55 0 0 20 0 9 0";
        assert_eq!(cpu_ticks(line), Some(425));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory_limits_come_from_meminfo_and_cgroup() {
        assert_eq!(
            mem_total_bytes("MemTotal:       24000000 kB\nMemFree: 1 kB\n"),
            Some(24_000_000 * 1024)
        );
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("1073741824\n"), Some(1 << 30));
    }

    #[test]
    fn disk_use_leaves_reserved_blocks_out() {
        assert_eq!(used_pct(100, 20, 15), 80.0 / 95.0 * 100.0);
        assert_eq!(used_pct(0, 0, 0), 0.0);
    }

    #[test]
    fn a_sampler_reads_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ResourceSampler::new(dir.path());
        let first = s.sample(0);
        assert!(first.mem_pct > 0.0 && first.mem_pct < 100.0, "{first:?}");
        assert!(first.disk_pct > 0.0 && first.disk_pct <= 100.0, "{first:?}");
        assert!(process_cpu_secs().is_some());
    }
}
