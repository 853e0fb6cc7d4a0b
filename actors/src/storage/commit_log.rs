//! The node's commit log: one append-only file that makes every vnode's writes durable with a
//! single fdatasync per batch.
//!
//! Why: 64 vnode files each doing their own durable commit reach only a few thousand commits/s
//! on this class of machine, while one log can fsync many vnodes' writes at once. A vnode
//! commits to its redb file in memory first (`Durability::None`), then hands the resulting
//! objects here; in `sync` mode the client is answered only after this log's fsync.
//!
//! Invariant: an entry may be dropped from the log only after its vnode has made its file
//! durable (`Durability::Immediate`) after applying it. Segments roll over at a size; sealed
//! segments are deleted by [`CommitLog::release_through`] once every vnode has checkpointed.
//!
//! The record format is in [`super::log_record`]; [`super::log_index`] keeps which segments
//! hold which partitions, so a vnode starting at run time reads only those.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::log_index::SegmentIndex;
use super::log_record::{LogEntry, encode_record, read_segments, segment_ids, segment_path};

/// A group commit waits for more writes only after a group of at least this many: about that
/// many writers are waiting on each sync. Fewer gain little from a wait that each of them pays.
const GATHER_MIN_WRITES: u64 = 8;

/// When the log acknowledges appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDurability {
    /// Acknowledge after the fdatasync covering the entry.
    Sync,
    /// Acknowledge at once; fdatasync at least this often.
    Buffered(Duration),
}

/// Work called once entries are durable (sync) or written (buffered), or with why they are not.
pub type OnDurable = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Command {
    Append(Vec<LogEntry>, Option<OnDurable>),
    Barrier(mpsc::Sender<()>),
    Release(u64),
    Shutdown,
}

/// Handle to the log writer thread; cheap to clone.
#[derive(Clone)]
pub struct CommitLog {
    tx: mpsc::Sender<Command>,
    dir: PathBuf,
    syncs: Arc<AtomicU64>,
    index: Arc<Mutex<SegmentIndex>>,
    /// The segment being appended to.
    current: Arc<AtomicU64>,
}

impl std::fmt::Debug for CommitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitLog").field("dir", &self.dir).finish()
    }
}

/// Segments sealed by the writer: their ids may be released once every vnode checkpointed.
pub type SealedReceiver = mpsc::Receiver<u64>;

impl CommitLog {
    /// Opens the log in `dir`, starting a new segment after any existing ones.
    ///
    /// Existing segments are reported on the returned receiver as sealed straight away: the
    /// caller replays them into the vnodes, checkpoints, then releases them.
    ///
    /// With `Sync` durability, `group_window` is how long the writer lets a busy stream of
    /// appends gather before it syncs (see [`Writer::run`]); zero syncs at once.
    pub fn open(
        dir: &Path,
        durability: LogDurability,
        segment_bytes: u64,
        group_window: Duration,
    ) -> io::Result<(CommitLog, SealedReceiver, JoinHandle<()>)> {
        fs::create_dir_all(dir)?;
        let existing = segment_ids(dir)?;
        let next = existing.last().map_or(0, |id| id + 1);
        let (sealed_tx, sealed_rx) = mpsc::channel();
        if let Some(&last) = existing.last() {
            let _ = sealed_tx.send(last);
        }
        let mut index = SegmentIndex::default();
        for &id in &existing {
            index.note_existing(id);
        }
        let index = Arc::new(Mutex::new(index));
        let current = Arc::new(AtomicU64::new(next));
        let file = open_segment(dir, next)?;
        let (tx, rx) = mpsc::channel();
        let syncs = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            index: index.clone(),
            current: current.clone(),
            syncs: syncs.clone(),
            dir: dir.to_path_buf(),
            durability,
            group_window,
            segment_bytes,
            id: next,
            file,
            written: 0,
            sealed: sealed_tx,
            last_sync: Instant::now(),
            dirty: false,
            torn: false,
            failures: FailureLog::default(),
        };
        let handle = std::thread::Builder::new()
            .name("commit-log".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            CommitLog {
                tx,
                dir: dir.to_path_buf(),
                syncs,
                index,
                current,
            },
            sealed_rx,
            handle,
        ))
    }

    /// fdatasync calls made on the segments so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues entries; `on_durable` runs on the writer thread once they are durable (sync) or
    /// written (buffered), or with the I/O error that kept them out of the log. Returns false
    /// when the writer has stopped: nothing is durable then.
    pub fn append(&self, entries: Vec<LogEntry>, on_durable: Option<OnDurable>) -> bool {
        self.tx.send(Command::Append(entries, on_durable)).is_ok()
    }

    /// Blocks until everything appended before this call is written and synced; false when
    /// that failed.
    pub fn barrier(&self) -> bool {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Command::Barrier(tx)).is_ok() && rx.recv().is_ok()
    }

    /// Every entry of `partition` still in the log, oldest first, including all appended
    /// before this call; reads only the segments that hold the partition.
    pub fn entries_of(&self, partition: u32) -> io::Result<Vec<LogEntry>> {
        if !self.barrier() {
            return Err(io::Error::other("commit log stopped"));
        }
        let ids = lock(&self.index).segments_with(partition);
        let newest = self.current.load(Ordering::Acquire);
        read_segments(&self.dir, &ids, Some(newest), Some(partition))
    }

    /// Deletes sealed segments up to and including `id` (every vnode has checkpointed them).
    pub fn release_through(&self, id: u64) {
        let _ = self.tx.send(Command::Release(id));
    }

    /// Syncs what is written and stops the writer thread.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }
}

fn open_segment(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, id))?;
    // The new file's directory entry must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn lock(index: &Mutex<SegmentIndex>) -> std::sync::MutexGuard<'_, SegmentIndex> {
    index.lock().unwrap_or_else(|p| p.into_inner())
}

struct Writer {
    dir: PathBuf,
    index: Arc<Mutex<SegmentIndex>>,
    current: Arc<AtomicU64>,
    durability: LogDurability,
    segment_bytes: u64,
    id: u64,
    file: File,
    written: u64,
    sealed: mpsc::Sender<u64>,
    last_sync: Instant,
    dirty: bool,
    group_window: Duration,
    syncs: Arc<AtomicU64>,
    /// The segment may end in a record cut short by a failed write that could not be removed.
    torn: bool,
    failures: FailureLog,
}

/// Logs I/O failures and the recovery after them, each at most once per
/// [`FAILURE_LOG_EVERY`]: a full disk fails every batch, and one that frees a little space now
/// and then would make them alternate.
#[derive(Default)]
struct FailureLog {
    failing: bool,
    last_failure: Option<Instant>,
    last_recovery: Option<Instant>,
    suppressed: u64,
}

/// How often a repeating log failure is logged.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

impl FailureLog {
    fn warn(&mut self, e: &io::Error, what: &str) {
        self.failing = true;
        if self
            .last_failure
            .is_some_and(|t| t.elapsed() < FAILURE_LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::error!(error = %e, suppressed = self.suppressed, "{what}");
        self.last_failure = Some(Instant::now());
        self.suppressed = 0;
    }

    fn recovered(&mut self) {
        if !std::mem::take(&mut self.failing)
            || self
                .last_recovery
                .is_some_and(|t| t.elapsed() < FAILURE_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            failures_not_logged = self.suppressed,
            "commit log writes succeed again"
        );
        self.last_recovery = Some(Instant::now());
    }
}

impl Writer {
    /// Group commit: takes everything queued, writes it once and syncs once. After a group of
    /// [`GATHER_MIN_WRITES`] or more it first waits `group_window`, so the next group grows:
    /// each fdatasync costs the node about as much CPU as the writes it covers, and fewer,
    /// fuller syncs leave that CPU to requests. The waiting writers then arrive together, so
    /// the groups stay large while the load lasts; a lone writer or a few never wait.
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut last_group = 0u64;
        loop {
            let first = match self.durability {
                LogDurability::Sync => rx.recv().ok(),
                LogDurability::Buffered(every) => match rx.recv_timeout(every) {
                    Ok(c) => Some(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(e) = self.sync_if_dirty() {
                            // Buffered writes were acknowledged when written: the sync is
                            // retried with the next one, as a full disk may free up.
                            self.failures.warn(&e, "commit log sync failed; retrying");
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                },
            };
            let Some(first) = first else { break };
            let append = matches!(first, Command::Append(..));
            if self.durability == LogDurability::Sync && append && last_group >= GATHER_MIN_WRITES {
                std::thread::sleep(self.group_window);
            }
            let mut acks: Vec<OnDurable> = Vec::new();
            let mut partitions = Vec::new();
            let mut writes = 0u64;
            let mut barriers = Vec::new();
            let mut stop = false;
            let mut cmd = Some(first);
            while let Some(c) = cmd.take() {
                match c {
                    Command::Append(entries, ack) => {
                        for e in &entries {
                            encode_record(e, &mut buf);
                            partitions.push(e.partition);
                        }
                        acks.extend(ack);
                        writes += entries.len() as u64;
                    }
                    Command::Barrier(tx) => barriers.push(tx),
                    Command::Release(id) => self.release(id),
                    Command::Shutdown => stop = true,
                }
                if buf.len() < (8 << 20) && !stop {
                    cmd = rx.try_recv().ok();
                }
            }
            partitions.sort_unstable();
            partitions.dedup();
            let outcome = self.write_batch(&buf, &partitions, &barriers, stop);
            buf.clear();
            last_group = writes;
            match outcome {
                Ok(()) => {
                    self.failures.recovered();
                    for ack in acks {
                        ack(Ok(()));
                    }
                    for b in barriers {
                        let _ = b.send(());
                    }
                }
                Err(e) => {
                    // The batch is cut off the segment again, so a later batch never follows a
                    // torn record (replay stops at one); its writers learn why.
                    self.failures
                        .warn(&e, "commit log write failed; its writes are refused");
                    let reason = format!("commit log: {e}");
                    for ack in acks {
                        ack(Err(reason.clone()));
                    }
                }
            }
            if stop {
                break;
            }
        }
        if let Err(e) = self.sync_if_dirty() {
            tracing::error!(error = %e, "commit log sync failed at shutdown");
        }
    }

    /// Writes (and in `Sync` mode syncs) one batch. On failure the segment is cut back to
    /// where the batch began, or, when that fails too, left for a fresh one: either way every
    /// earlier batch stays a readable prefix.
    fn write_batch(
        &mut self,
        buf: &[u8],
        partitions: &[u32],
        barriers: &[mpsc::Sender<()>],
        stop: bool,
    ) -> io::Result<()> {
        if self.torn {
            self.roll_unsynced()?;
        }
        // Before the write: a reader may find the records the moment they are in the file.
        lock(&self.index).note(self.id, partitions.iter().copied());
        let start = self.written;
        if let Err(e) = self.append_and_sync(buf, barriers, stop) {
            self.cut_back(start);
            return Err(e);
        }
        if self.written >= self.segment_bytes {
            // The batch is durable whatever happens here; a failed roll is retried later.
            if let Err(e) = self.roll() {
                self.failures
                    .warn(&e, "commit log cannot start a new segment; retrying");
            }
        }
        Ok(())
    }

    fn append_and_sync(
        &mut self,
        buf: &[u8],
        barriers: &[mpsc::Sender<()>],
        stop: bool,
    ) -> io::Result<()> {
        if !buf.is_empty() {
            self.dirty = true;
            self.written += buf.len() as u64;
            self.file.write_all(buf)?;
        }
        let must_sync = match self.durability {
            LogDurability::Sync => true,
            LogDurability::Buffered(every) => {
                !barriers.is_empty() || stop || self.last_sync.elapsed() >= every
            }
        };
        if self.dirty && must_sync {
            self.file.sync_data()?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Drops everything the segment holds past `len` (a failed batch's partial record).
    fn cut_back(&mut self, len: u64) {
        self.written = len;
        match self.file.set_len(len) {
            Ok(()) => self.dirty = true,
            Err(e) => {
                self.failures
                    .warn(&e, "commit log cannot cut a failed batch off its segment");
                self.torn = true;
            }
        }
    }

    /// Leaves a segment that may end in a torn record for a fresh one, without syncing it:
    /// whatever it holds past its valid prefix was never acknowledged.
    fn roll_unsynced(&mut self) -> io::Result<()> {
        let next = open_segment(&self.dir, self.id + 1)?;
        let sealed = self.id;
        self.id += 1;
        self.current.store(self.id, Ordering::Release);
        self.file = next;
        self.written = 0;
        self.dirty = false;
        self.torn = false;
        let _ = self.sealed.send(sealed);
        Ok(())
    }

    fn sync_if_dirty(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.dirty = false;
        let next = open_segment(&self.dir, self.id + 1)?;
        let sealed = self.id;
        self.id += 1;
        self.current.store(self.id, Ordering::Release);
        self.file = next;
        self.written = 0;
        let _ = self.sealed.send(sealed);
        Ok(())
    }

    fn release(&self, through: u64) {
        let Ok(ids) = segment_ids(&self.dir) else {
            return;
        };
        for id in ids.into_iter().filter(|&id| id <= through && id != self.id) {
            // Oldest first, stopping at a failure: replay must always see a suffix of the log.
            if let Err(e) = fs::remove_file(segment_path(&self.dir, id)) {
                tracing::warn!(segment = id, error = %e, "could not delete released log segment");
                return;
            }
            lock(&self.index).forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::log_record::{entry, read_entries};

    #[test]
    fn appends_survive_reopen_and_filter_by_partition() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _sealed, h) =
            CommitLog::open(dir.path(), LogDurability::Sync, 1 << 20, Duration::ZERO).unwrap();
        let (tx, rx) = mpsc::channel();
        log.append(
            vec![entry(1, "a", "x"), entry(2, "b", "y")],
            Some(Box::new(move |r: Result<(), String>| {
                r.unwrap();
                tx.send(()).unwrap()
            })),
        );
        rx.recv().unwrap();
        log.shutdown();
        h.join().unwrap();
        assert_eq!(
            read_entries(dir.path(), Some(2)).unwrap(),
            vec![entry(2, "b", "y")]
        );
        let (_log, sealed, _h) =
            CommitLog::open(dir.path(), LogDurability::Sync, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(
            sealed.recv().unwrap(),
            0,
            "the old segment is offered for release"
        );
    }

    /// Appends from `threads` writers, each waiting for its acknowledgement, for `run`.
    fn busy_writers(log: &CommitLog, threads: usize, run: Duration) -> u64 {
        let until = Instant::now() + run;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    s.spawn(move || {
                        let mut n = 0u64;
                        while Instant::now() < until {
                            let (tx, rx) = mpsc::channel();
                            log.append(
                                vec![entry(t as u32, "k", "v")],
                                Some(Box::new(move |r: Result<(), String>| {
                                    r.unwrap();
                                    tx.send(()).unwrap()
                                })),
                            );
                            rx.recv().unwrap();
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        })
    }

    #[test]
    fn a_busy_log_gathers_writes_into_fewer_syncs_and_a_lone_writer_does_not_wait() {
        // A long window, so waiting on it and not waiting differ by far more than any sync.
        let window = Duration::from_millis(200);
        let dir = tempfile::tempdir().unwrap();
        let (log, _sealed, _h) =
            CommitLog::open(dir.path(), LogDurability::Sync, 1 << 30, window).unwrap();
        let lone = 10;
        let started = Instant::now();
        for _ in 0..lone {
            let (tx, rx) = mpsc::channel();
            log.append(
                vec![entry(0, "k", "v")],
                Some(Box::new(move |r: Result<(), String>| {
                    r.unwrap();
                    tx.send(()).unwrap()
                })),
            );
            rx.recv().unwrap();
        }
        assert!(
            started.elapsed() < window * lone / 2,
            "a lone writer waited for the window: {:?} for {lone} appends",
            started.elapsed()
        );
        // One append of as many writes as make a full group (a vnode's batch under load)
        // opens the window; from then on the busy writers keep the groups full.
        let (tx, rx) = mpsc::channel();
        let batch = (0..GATHER_MIN_WRITES).map(|i| entry(0, &i.to_string(), "v"));
        log.append(
            batch.collect(),
            Some(Box::new(move |r: Result<(), String>| {
                r.unwrap();
                tx.send(()).unwrap()
            })),
        );
        rx.recv().unwrap();
        let run = Duration::from_millis(1000);
        let syncs = log.syncs();
        let writes = busy_writers(&log, 32, run);
        let syncs = log.syncs() - syncs;
        let most = (run.as_millis() / window.as_millis()) as u64 + 5;
        assert!(
            syncs <= most,
            "{syncs} syncs for {writes} writes; at most {most} expected"
        );
        assert!(writes >= 8 * syncs, "{writes} writes in {syncs} syncs");
    }

    #[test]
    fn rolls_and_releases_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (log, sealed, _h) =
            CommitLog::open(dir.path(), LogDurability::Sync, 64, Duration::ZERO).unwrap();
        for i in 0..10 {
            log.append(
                vec![entry(
                    0,
                    &format!("k{i}"),
                    "0123456789012345678901234567890123456789",
                )],
                None,
            );
            assert!(log.barrier());
        }
        let last = sealed.try_iter().last().expect("segments were sealed");
        assert_eq!(read_entries(dir.path(), None).unwrap().len(), 10);
        log.release_through(last);
        assert!(log.barrier());
        assert_eq!(segment_ids(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn entries_of_reads_only_the_segments_holding_the_partition() {
        let dir = tempfile::tempdir().unwrap();
        let value = &"0123456789".repeat(6);
        {
            let (log, _sealed, h) =
                CommitLog::open(dir.path(), LogDurability::Sync, 64, Duration::ZERO).unwrap();
            log.append(vec![entry(9, "from-before", value)], None);
            assert!(log.barrier());
            log.shutdown();
            h.join().unwrap();
        }
        let (log, _sealed, _h) =
            CommitLog::open(dir.path(), LogDurability::Sync, 64, Duration::ZERO).unwrap();
        // Segments of 64 bytes: each append below fills one.
        for i in 0..3 {
            log.append(vec![entry(1, &format!("a{i}"), value)], None);
            assert!(log.barrier());
        }
        log.append(vec![entry(2, "b", value)], None);
        assert!(log.barrier());
        let ones = log.entries_of(1).unwrap();
        assert_eq!(
            ones.iter().map(|e| e.key.as_slice()).collect::<Vec<_>>(),
            [b"a0", b"a1", b"a2"]
        );
        // Replace a segment that holds only partition 1 by something unreadable: partition 2
        // and a partition new to the log never touch it, partition 1 does.
        let ids = segment_ids(dir.path()).unwrap();
        // Two from before (one rolled, one empty), one per append, and the current one.
        assert_eq!(ids.len(), 7, "{ids:?}");
        let a1 = ids[3];
        fs::remove_file(segment_path(dir.path(), a1)).unwrap();
        fs::create_dir(segment_path(dir.path(), a1)).unwrap();
        assert_eq!(log.entries_of(2).unwrap(), vec![entry(2, "b", value)]);
        assert_eq!(log.entries_of(5).unwrap(), vec![]);
        assert!(log.entries_of(1).is_err(), "partition 1's segment was read");
        // A segment from before the writer started may hold any partition.
        assert_eq!(
            log.entries_of(9).unwrap(),
            vec![entry(9, "from-before", value)]
        );
    }
}
