//! A node whose data folder fills up, with real processes: writes fail with `Storage`, reads go
//! on, nothing acknowledged is lost, and writes resume once space returns. The data folder is
//! a small tmpfs, so these tests need root to mount it; without it they skip loudly.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TestCluster, process_gone, wait_until};
use ringkv::{Client, KvError};
use ringkv_actors::protocol::VnodeHealth;

/// Value size of every write: few writes fill the small file system.
const VALUE_BYTES: usize = 8000;

/// A tmpfs mounted for one test, lazily unmounted when dropped (a node may still hold files).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mb` MiB on `path`, or says why it cannot.
    fn mount(path: &Path, mb: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Gives the file system `mb` MiB in all, keeping its files.
    fn resize(&self, mb: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(&self.path)
            .output()
            .expect("mount runs");
        assert!(out.status.success(), "remount: {:?}", out);
    }

    /// Fills what is left with a file until the kernel says the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler file");
        let block = vec![0xA5u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = f.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The tmpfs, or `None` after a `SKIPPED` line on the stderr descriptor itself (the harness
/// hides a passing test's captured output).
fn tmpfs_or_skip(test: &str, path: &Path, mb: u64) -> Option<Tmpfs> {
    match Tmpfs::mount(path, mb) {
        Ok(t) => Some(t),
        Err(why) => {
            let line = format!("\n*** SKIPPED {test}: {why} ***\n\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

fn value_for(key: &str) -> Vec<u8> {
    let mut v = format!("{key}=").into_bytes();
    v.resize(VALUE_BYTES, b'#');
    v
}

/// Four writers putting fresh keys until one of them sees a write refused with `Storage`;
/// returns the acknowledged keys and that error's text. Other failures are only counted.
async fn write_until_refused(
    client: &Client,
    prefix: &str,
    within: Duration,
) -> (Vec<String>, String) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (client, stop, prefix) = (client.clone(), stop.clone(), prefix.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), None);
            let end = Instant::now() + within;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let key = format!("{prefix}-{w}-{i}");
                i += 1;
                match client.put(&key, value_for(&key)).await {
                    Ok(_) => acked.push(key),
                    Err(KvError::Storage(e)) => {
                        refused = Some(e);
                        stop.store(true, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
            (acked, refused)
        }));
    }
    let (mut acked, mut refused) = (Vec::new(), None);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        acked.extend(a);
        refused = refused.or(r);
    }
    let refused = refused.unwrap_or_else(|| panic!("no write was refused within {within:?}"));
    (acked, refused)
}

/// Asserts every key in `keys` reads back its own value.
async fn assert_readable(client: &Client, keys: &[String], when: &str) {
    let mut bad = Vec::new();
    for k in keys {
        match client.get(k).await {
            Ok(r) if r.value() == Some(value_for(k).as_slice()) => {}
            other => bad.push(format!(
                "{k}: {:?}",
                other.map(|r| r.value().map(<[u8]>::len))
            )),
        }
    }
    assert!(
        bad.is_empty(),
        "{when}: {} of {} acknowledged keys unreadable, e.g. {:?}",
        bad.len(),
        keys.len(),
        &bad[..bad.len().min(5)]
    );
}

/// Puts `n` fresh keys one after another, each of which must succeed.
async fn write_all(client: &Client, prefix: &str, n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}-{i}");
        client
            .put(&key, value_for(&key))
            .await
            .unwrap_or_else(|e| panic!("write {key} after space returned: {e}"));
        keys.push(key);
    }
    keys
}

/// Waits until a write succeeds again.
async fn wait_writable(client: &Client) {
    wait_until(
        "writes to succeed again",
        Duration::from_secs(60),
        || async { client.put("probe", value_for("probe")).await.is_ok() },
    )
    .await;
}

/// A one-node cluster whose data folder is a tmpfs of `mb` MiB, its client and the node's pid;
/// `None` when the tmpfs cannot be mounted (skipped loudly).
async fn node_on_tmpfs(
    test: &str,
    prefix: &str,
    extra: &str,
    mb: u64,
) -> Option<(TestCluster, Tmpfs, Client, u32)> {
    let mut c = TestCluster::configure(prefix, 1, extra);
    let disk = tmpfs_or_skip(test, &c.node_dir(0), mb)?;
    c.spawn(0);
    c.wait_ready().await;
    let client = c.client().await;
    let pid = c.pid(0);
    Some((c, disk, client, pid))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let extra = "[storage]\nlog_segment_mb = 2\nmin_free_mb = 6\n";
    let Some((mut c, disk, client, pid)) = node_on_tmpfs("disk_full", "dfull", extra, 24).await
    else {
        return;
    };

    // The guard refuses writes while a few MiB are still free.
    let (mut acked, refused) = write_until_refused(&client, "a", Duration::from_secs(120)).await;
    assert!(
        refused.contains("disk full") && refused.contains("min_free_mb"),
        "the refusal says why: {refused}"
    );
    assert!(
        acked.len() > 100,
        "only {} writes before the disk filled",
        acked.len()
    );
    let err = client.put("late", value_for("late")).await.unwrap_err();
    assert!(matches!(err, KvError::Storage(_)), "{err:?}");
    let err = client.delete(&acked[0]).await.unwrap_err();
    assert!(
        matches!(err, KvError::Storage(_)),
        "a delete is a write too: {err:?}"
    );
    assert_readable(&client, &acked, "with the disk nearly full").await;

    // Someone else takes the rest: the file system is at 100 %.
    let filler = disk.fill();
    let err = client.put("later", value_for("later")).await.unwrap_err();
    assert!(matches!(err, KvError::Storage(_)), "{err:?}");
    assert_readable(&client, &acked, "with the disk full").await;
    assert!(
        !process_gone(pid),
        "the node must keep running on a full disk"
    );

    // Space returns: writes resume without a restart, through several log segments (each one
    // checkpoints every vnode).
    std::fs::remove_file(filler).unwrap();
    disk.resize(96);
    wait_writable(&client).await;
    acked.extend(write_all(&client, "b", 800).await);
    assert_readable(&client, &acked, "after space returned").await;
    let log = c.log(0);
    assert!(log.contains("disk nearly full"), "the refusal is logged");
    assert!(
        log.contains("taking writes again"),
        "the recovery is logged"
    );

    // And all of it is durable.
    assert!(c.stop(0), "clean stop");
    c.spawn(0);
    c.wait_ready().await;
    let client = c.client().await;
    assert_readable(&client, &acked, "after a restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_guard_a_disk_full_of_log_loses_nothing_and_recovers() {
    // The guard off: writes run the file system out of space in the commit log itself, and a
    // checkpoint can fail there too.
    let extra = "[storage]\nlog_segment_mb = 2\nmin_free_mb = 0\n";
    let Some((mut c, disk, client, pid)) =
        node_on_tmpfs("disk_full (unguarded)", "dnog", extra, 20).await
    else {
        return;
    };

    let (mut acked, refused) = write_until_refused(&client, "a", Duration::from_secs(120)).await;
    assert!(
        refused.contains("No space left on device"),
        "the refusal names the I/O error: {refused}"
    );
    assert!(
        !process_gone(pid),
        "the node must keep running on a full disk"
    );

    disk.resize(96);
    wait_writable(&client).await;
    // Vnodes whose checkpoint failed on the full disk start again by themselves.
    wait_until(
        "every vnode to serve again",
        Duration::from_secs(90),
        || async {
            client.node_status(&c.ids[0]).await.is_ok_and(|s| {
                s.vnodes.len() == s.partitions as usize
                    && s.vnodes.iter().all(|v| v.health == VnodeHealth::Serving)
            })
        },
    )
    .await;
    acked.extend(write_all(&client, "b", 600).await);
    assert_readable(&client, &acked, "after space returned").await;

    assert!(c.stop(0), "clean stop");
    c.spawn(0);
    c.wait_ready().await;
    let client = c.client().await;
    assert_readable(&client, &acked, "after a restart").await;
}
