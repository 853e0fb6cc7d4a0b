//! Durability of acknowledged writes across clean restarts and SIGKILL, with real processes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestCluster, wait_until};
use ringkv::Client;

/// Writers putting unique keys until told to stop; returns every acknowledged (key, value).
async fn write_load(
    client: &Client,
    writers: usize,
    value_size: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Vec<(String, Vec<u8>)> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (client, stop, acked, log) = (client.clone(), stop.clone(), acked.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                let mut value = format!("value-{w}-{i}-").into_bytes();
                value.resize(value_size.max(value.len()), b'.');
                match client
                    .put_with(
                        &key,
                        &value,
                        &ringkv::RequestOptions {
                            context: None,
                            timeout: Some(Duration::from_secs(2)),
                            ..Default::default()
                        },
                    )
                    .await
                {
                    Ok(_) => {
                        log.lock().unwrap().push((key, value));
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    // After the kill every request fails; its outcome is unknown, not acknowledged.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(log).unwrap().into_inner().unwrap()
}

async fn assert_all_present(client: &Client, acked: &[(String, Vec<u8>)]) {
    let mut missing = Vec::new();
    for (k, v) in acked {
        let r = client.get(k).await.unwrap();
        if r.value() != Some(v.as_slice()) {
            missing.push(k.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clean_restart_keeps_every_acknowledged_key() {
    let mut c = TestCluster::start("rst", 1, "").await;
    let client = c.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let load = {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move { write_load(&client, 8, 100, stop, acked).await })
    };
    wait_until("2000 acknowledged writes", Duration::from_secs(60), || {
        let n = acked.load(Ordering::Relaxed);
        async move { n >= 2000 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let written = load.await.unwrap();
    client.delete(&written[0].0).await.unwrap();
    drop(client);
    assert!(c.stop(0), "node exits cleanly on SIGTERM");
    c.spawn(0);
    c.wait_ready().await;
    let client = c.client().await;
    assert!(
        !client.get(&written[0].0).await.unwrap().found(),
        "the delete survived too"
    );
    assert_all_present(&client, &written[1..]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_under_sync_write_load_loses_no_acknowledged_write() {
    // Small segments make the log roll and release segments during the run, so the kill
    // also lands around checkpoints.
    let mut c = TestCluster::start(
        "kil",
        1,
        "[storage]\ndurability = \"sync\"\nlog_segment_mb = 1\n",
    )
    .await;
    let client = c.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let load = {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move { write_load(&client, 16, 600, stop, acked).await })
    };
    wait_until("6000 acknowledged writes", Duration::from_secs(90), || {
        let n = acked.load(Ordering::Relaxed);
        async move { n >= 6000 }
    })
    .await;
    c.kill(0);
    stop.store(true, Ordering::Relaxed);
    let written = load.await.unwrap();
    drop(client);
    let log_dir = c.node_dir(0).join("commitlog");
    let segments = std::fs::read_dir(&log_dir).unwrap().count();
    c.spawn(0);
    c.wait_ready().await;
    let client = c.client().await;
    assert_all_present(&client, &written).await;
    // ~3.6 MB went through 1 MiB segments: some were released after checkpoints.
    assert!(
        segments < 4,
        "released segments were deleted ({segments} left)"
    );
    assert!(c.log(0).contains("replaying commit log"));
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_overrides_the_file() {
    let mut c = TestCluster::configure("env", 1, "");
    c.env("RINGKV__STORAGE__DURABILITY", "buffered");
    c.env("RINGKV__STORAGE__FLUSH_INTERVAL_MS", "20");
    c.spawn(0);
    c.wait_ready().await;
    let client = c.client().await;
    let status = client.node_status(&c.ids[0]).await.unwrap();
    assert_eq!(status.durability, "buffered");
    let mut expect = HashMap::new();
    for i in 0..300 {
        client.put(format!("b{i}"), format!("{i}")).await.unwrap();
        expect.insert(format!("b{i}"), format!("{i}").into_bytes());
    }
    drop(client);
    assert!(c.stop(0));
    c.spawn(0);
    c.wait_ready().await;
    let client = c.client().await;
    let pairs: Vec<(String, Vec<u8>)> = expect.into_iter().collect();
    assert_all_present(&client, &pairs).await;
}

/// The highest counter a context names for any incarnation of `node` (dot authors are
/// `<node>~<incarnation>`), and the incarnations it names.
fn counter_in(ctx: &ringkv::Context, node: &str) -> (u64, Vec<String>) {
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ctx.to_base64(),
    )
    .unwrap();
    let ctx = ringkv_actors::protocol::decode_context(&bytes).unwrap();
    let prefix = format!("{node}~");
    let authors: Vec<String> = ctx
        .seen
        .0
        .keys()
        .chain(ctx.dots.iter().map(|d| &d.node))
        .filter(|a| a.starts_with(&prefix))
        .cloned()
        .collect();
    let max = authors
        .iter()
        .map(|a| ctx.max_counter(a))
        .max()
        .unwrap_or(0);
    (max, authors)
}

#[tokio::test(flavor = "multi_thread")]
async fn write_counters_are_never_reissued_after_a_crash() {
    let mut c = TestCluster::start("dots", 1, "").await;
    let node = c.ids[0].clone();
    let client = c.client().await;
    let mut highest = 0;
    for i in 0..50 {
        let ctx = client.put(format!("k{i}"), "v").await.unwrap();
        highest = highest.max(counter_in(&ctx, &node).0);
    }
    assert!(highest > 0);
    drop(client);
    c.kill(0);
    c.spawn(0);
    c.wait_ready().await;
    let client = c.client().await;
    let (after, authors) = counter_in(&client.put("fresh", "v").await.unwrap(), &node);
    assert!(
        after > highest,
        "a counter issued before the crash was reused"
    );
    // The restarted node writes as a new incarnation: its clock entries cannot claim to have
    // seen dots it minted before the crash and may have lost.
    assert_eq!(authors, vec![format!("{node}~2")]);
}
