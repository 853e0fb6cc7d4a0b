//! One node's wall clock minutes off the others', with real processes: libfaketime shifts
//! that node's `CLOCK_REALTIME` (its monotonic clock, which every timeout uses, is left alone).
//! Ahead, it refuses the writes it coordinates as already expired (the client then goes through
//! another node) and never applies one; behind, it takes them. Either way the history checker
//! finds no acknowledged write lost. Without libfaketime (`apt-get install faketime`) the test
//! skips loudly.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::checker::check;
use common::workload::{self, Route, WorkloadOptions};
use common::{TestCluster, wait_hints_drained};
use ringkv::{Client, KvError, RequestOptions};
use ringkv_actors::core::quorum::Consistency;

/// How far the skewed node's clock is moved, seconds.
const SKEW_SECS: i64 = 300;

/// Where Debian's `faketime` package puts the preload library.
fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Node `i` restarted with its wall clock `secs` off.
async fn restart_skewed(c: &mut TestCluster, i: usize, lib: &std::path::Path, secs: i64) {
    assert!(c.stop(i), "clean stop of {}", c.ids[i]);
    let offset = format!("{secs:+}");
    c.env_for(
        i,
        &[
            ("LD_PRELOAD", &lib.display().to_string()),
            ("FAKETIME", &offset),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    c.spawn(i);
    c.wait_ready().await;
}

/// Seconds by which node `i`'s log timestamps run ahead of this process's clock, read from
/// the last line it wrote: proof that the skew took effect.
fn log_skew_secs(c: &TestCluster, i: usize) -> i64 {
    let log = c.log(i);
    let stamp = log
        .lines()
        .rev()
        .find_map(|l| l.split_whitespace().next().filter(|w| w.starts_with("20")))
        .unwrap_or_else(|| panic!("no timestamped line in {}'s log", c.ids[i]));
    let then = rfc3339_secs(stamp).unwrap_or_else(|| panic!("unreadable timestamp {stamp}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    then - now
}

/// Unix seconds of an RFC 3339 UTC stamp as tracing writes it (`2026-12-07T15:56:21.16Z`).
fn rfc3339_secs(stamp: &str) -> Option<i64> {
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.trim_end_matches('Z').split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let s = t.next()?.split('.').next()?.parse::<i64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60 + s)
}

fn options(tag: &str) -> WorkloadOptions {
    WorkloadOptions {
        writers: 4,
        keys: 8,
        key_prefix: format!("{tag}-"),
        tag: tag.into(),
        duration: Some(Duration::from_secs(4)),
        r: Some(Consistency::Quorum),
        w: Some(Consistency::Quorum),
        timeout: Some(Duration::from_secs(3)),
        route: Route::Client,
        delete_share: 0.1,
        ..Default::default()
    }
}

/// Runs the workload, converges the replicas and checks the history: nothing acknowledged lost.
async fn run_and_check(c: &TestCluster, client: &Client, tag: &str) -> workload::Counts {
    let opts = options(tag);
    let run = workload::run(client, &opts).await;
    wait_hints_drained(client, &c.ids).await;
    for id in &c.ids {
        client.aae_run(id, Duration::from_secs(120)).await.unwrap();
    }
    let finals = workload::read_final(client, &opts.key_names(), Duration::from_secs(30)).await;
    let report = check(&run.history, &finals);
    eprintln!("{tag}: {:?}; {report}", run.counts);
    assert!(report.is_ok(), "{tag}: {report}");
    assert!(
        run.counts.acked > 20,
        "{tag}: too little load: {:?}",
        run.counts
    );
    run.counts
}

fn via(node: &str) -> RequestOptions {
    RequestOptions {
        via: Some(node.to_string()),
        timeout: Some(Duration::from_secs(3)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_minutes_off_loses_no_acknowledged_write() {
    let Some(lib) = libfaketime() else {
        let line =
            "\n*** SKIPPED clock_skew: libfaketime not found (apt-get install faketime) ***\n\n";
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    };
    let mut c = TestCluster::start_replicated("skw", 3, 3, "").await;
    let client = c.client().await;
    let skewed = c.ids[2].clone();

    // Ahead: every write this node coordinates has expired by its clock.
    restart_skewed(&mut c, 2, &lib, SKEW_SECS).await;
    let seen = log_skew_secs(&c, 2);
    assert!(
        (SKEW_SECS - 30..=SKEW_SECS + 30).contains(&seen),
        "the node's clock runs {seen} s ahead, not {SKEW_SECS}"
    );
    let err = client
        .put_with("ahead-direct", b"v", &via(&skewed))
        .await
        .unwrap_err();
    assert!(
        matches!(err, KvError::Timeout),
        "refused as expired: {err:?}"
    );
    let r = client.get("ahead-direct").await.unwrap();
    assert!(r.value().is_none(), "a refused write was applied somewhere");
    run_and_check(&c, &client, "ahead").await;
    assert!(
        c.log(2)
            .contains("refused writes whose attempt had already ended"),
        "the node ahead says why it refuses"
    );

    // Behind: its writes carry timestamps minutes old, and are kept all the same.
    restart_skewed(&mut c, 2, &lib, -SKEW_SECS).await;
    let seen = log_skew_secs(&c, 2);
    assert!(
        (-SKEW_SECS - 30..=-SKEW_SECS + 30).contains(&seen),
        "the node's clock runs {seen} s off, not -{SKEW_SECS}"
    );
    client
        .put_with("behind-direct", b"v", &via(&skewed))
        .await
        .expect("a node behind takes writes");
    assert_eq!(
        client.get("behind-direct").await.unwrap().value(),
        Some(&b"v"[..])
    );
    run_and_check(&c, &client, "behind").await;
}
