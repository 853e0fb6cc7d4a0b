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
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload`, payload =
//! `partition: u32 LE | key_len: u32 LE | key | object`. A torn or corrupt tail ends a segment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One logged write: the full object a vnode stored for a key after applying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Partition (vnode) the key belongs to.
    pub partition: u32,
    /// The key bytes.
    pub key: Vec<u8>,
    /// The encoded object stored for the key.
    pub object: Vec<u8>,
}

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
}

impl std::fmt::Debug for CommitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitLog").field("dir", &self.dir).finish()
    }
}

/// Segments sealed by the writer: their ids may be released once every vnode checkpointed.
pub type SealedReceiver = mpsc::Receiver<u64>;

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:010}.log"))
}

/// Ids of the segments present in `dir`, ascending.
pub fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Appends `e` as one record: length, CRC-32 of the rest, partition, key length, key, object.
pub fn encode_record(e: &LogEntry, out: &mut Vec<u8>) {
    let payload_len = 8 + e.key.len() + e.object.len();
    let start = out.len();
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&e.partition.to_le_bytes());
    out.extend_from_slice(&(e.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.key);
    out.extend_from_slice(&e.object);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes consecutive records from `bytes`, stopping at the first torn or corrupt one.
/// Returns the entries and whether the whole input was consumed cleanly.
pub fn decode_records(bytes: &[u8]) -> (Vec<LogEntry>, bool) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else {
            return (out, false);
        };
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            return (out, false);
        };
        if len < 8 || crc32fast::hash(payload) != crc {
            return (out, false);
        }
        let partition = u32::from_le_bytes(payload[0..4].try_into().unwrap());
        let key_len = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
        if 8 + key_len > len {
            return (out, false);
        }
        out.push(LogEntry {
            partition,
            key: payload[8..8 + key_len].to_vec(),
            object: payload[8 + key_len..].to_vec(),
        });
        at += 8 + len;
    }
    (out, true)
}

/// Reads every entry of every segment in `dir`, oldest first; `only` keeps one partition.
/// A segment removed while reading was released, so its entries are durable elsewhere.
pub fn read_entries(dir: &Path, only: Option<u32>) -> io::Result<Vec<LogEntry>> {
    let mut all = Vec::new();
    let ids = segment_ids(dir)?;
    let newest = ids.last().copied();
    for id in ids {
        let mut bytes = Vec::new();
        match File::open(segment_path(dir, id)) {
            Ok(f) => BufReader::new(f).read_to_end(&mut bytes)?,
            // Segments are released oldest first, so everything read so far was released too.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                all.clear();
                continue;
            }
            Err(e) => return Err(e),
        };
        let (entries, clean) = decode_records(&bytes);
        // The newest segment may be mid-append; an older one ends torn only after a crash.
        if !clean && Some(id) != newest {
            tracing::warn!(
                segment = id,
                kept = entries.len(),
                "commit log segment has a torn or corrupt tail; replaying the valid prefix"
            );
        }
        all.extend(
            entries
                .into_iter()
                .filter(|e| only.is_none_or(|p| p == e.partition)),
        );
    }
    Ok(all)
}

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
        let file = open_segment(dir, next)?;
        let (tx, rx) = mpsc::channel();
        let syncs = Arc::new(AtomicU64::new(0));
        let writer = Writer {
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

struct Writer {
    dir: PathBuf,
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
            let mut writes = 0u64;
            let mut barriers = Vec::new();
            let mut stop = false;
            let mut cmd = Some(first);
            while let Some(c) = cmd.take() {
                match c {
                    Command::Append(entries, ack) => {
                        for e in &entries {
                            encode_record(e, &mut buf);
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
            let outcome = self.write_batch(&buf, &barriers, stop);
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
        barriers: &[mpsc::Sender<()>],
        stop: bool,
    ) -> io::Result<()> {
        if self.torn {
            self.roll_unsynced()?;
        }
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(p: u32, k: &str, v: &str) -> LogEntry {
        LogEntry {
            partition: p,
            key: k.as_bytes().to_vec(),
            object: v.as_bytes().to_vec(),
        }
    }

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
    fn torn_tail_keeps_the_valid_prefix() {
        let mut buf = Vec::new();
        encode_record(&entry(3, "k", "v"), &mut buf);
        encode_record(&entry(3, "k2", "v2"), &mut buf);
        let cut = buf.len() - 3;
        let (entries, clean) = decode_records(&buf[..cut]);
        assert_eq!((entries.len(), clean), (1, false));
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(decode_records(&flipped).0.len(), 1);
    }

    proptest! {
        #[test]
        fn records_round_trip(es in prop::collection::vec((any::<u32>(), prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..80)), 0..20)) {
            let entries: Vec<LogEntry> = es.into_iter().map(|(partition, key, object)| LogEntry { partition, key, object }).collect();
            let mut buf = Vec::new();
            for e in &entries { encode_record(e, &mut buf); }
            prop_assert_eq!(decode_records(&buf), (entries, true));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_records(&bytes);
        }
    }
}
