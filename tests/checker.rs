//! The fault-injection checker on hand-made histories, and the workload plus checker against
//! real 3-node clusters: a healthy one that must pass and a last-write-wins one that must fail.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestCluster;
use common::checker::{Attempt, FinalState, History, Outcome, Report, check};
use common::workload::{self, Route, WorkloadOptions};
use ringkv_actors::core::quorum::Consistency;

use Outcome::{Acked, Unknown};

/// Ops each writer of the real-process tests runs.
const OPS_PER_WRITER: usize = 40;

fn history(attempts: Vec<Attempt>) -> History {
    History { attempts }
}

/// A final state for key `k`.
fn finals(values: &[&str]) -> FinalState {
    let values: BTreeSet<String> = values.iter().map(|v| v.to_string()).collect();
    FinalState::from([("k".to_string(), values)])
}

fn lost(report: &Report) -> Vec<&str> {
    report.lost.iter().map(|l| l.value.as_str()).collect()
}

#[test]
fn an_acknowledged_write_neither_present_nor_read_is_lost() {
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "b", &[], Acked),
    ]);
    let report = check(&h, &finals(&["b"]));
    assert_eq!(lost(&report), ["a"], "{report}");
    assert!(!report.is_ok());
    assert_eq!((report.acked, report.present, report.superseded), (2, 1, 0));
    assert!(report.to_string().contains("lost: k=a"), "{report}");
}

#[test]
fn a_chain_of_supersessions_ending_in_the_final_value_is_accepted() {
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "b", &["a"], Acked),
        Attempt::put("k", "c", &["b"], Acked),
        Attempt::put("k", "d", &["c"], Acked),
    ]);
    let report = check(&h, &finals(&["d"]));
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.acked, report.present, report.superseded), (4, 1, 3));
}

#[test]
fn siblings_resolved_by_a_later_write_are_accepted() {
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "b", &[], Acked),
        Attempt::put("k", "c", &["a", "b"], Acked),
        Attempt::put("k", "d", &["c"], Acked),
        Attempt::put("k", "e", &["c"], Acked),
    ]);
    let report = check(&h, &finals(&["d", "e"]));
    assert!(report.is_ok(), "{report}");
}

#[test]
fn supersession_by_unknown_outcome_writes_is_accepted_when_they_left_a_trace() {
    // u1 is in the final state; u2 was read by an acknowledged write; u3 by an unknown write
    // that is itself present; the unknown delete is unobservable and may have been applied.
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "u1", &["a"], Unknown),
        Attempt::put("k", "b", &[], Acked),
        Attempt::put("k", "u2", &["b"], Unknown),
        Attempt::put("k", "c", &["u2"], Acked),
        Attempt::put("k", "d", &[], Acked),
        Attempt::put("k", "u3", &["d"], Unknown),
        Attempt::put("k", "u4", &["u3"], Unknown),
        Attempt::put("k", "e", &[], Acked),
        Attempt::delete("k", "x1", &["e"], Unknown),
    ]);
    let report = check(&h, &finals(&["u1", "c", "u4"]));
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.acked, report.present, report.superseded), (5, 1, 4));
}

#[test]
fn supersession_by_an_unknown_put_that_left_no_trace_is_not_accepted() {
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "u", &["a"], Unknown),
        Attempt::put("k", "v", &["u"], Unknown),
        Attempt::put("k", "b", &[], Acked),
    ]);
    let report = check(&h, &finals(&["b"]));
    assert_eq!(lost(&report), ["a"], "{report}");
}

#[test]
fn a_write_superseded_only_by_a_lost_write_is_not_reported_twice() {
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "b", &["a"], Acked),
        Attempt::put("k", "c", &[], Acked),
    ]);
    let report = check(&h, &finals(&["c"]));
    assert_eq!(lost(&report), ["b"], "{report}");
}

#[test]
fn an_acknowledged_delete_accounts_for_what_it_read_and_concurrent_puts_survive_it() {
    let mut h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "b", &["a"], Acked),
        Attempt::delete("k", "x1", &["b"], Acked),
    ]);
    assert!(check(&h, &finals(&[])).is_ok());
    // Read before the delete was applied: a sibling of its tombstone.
    h.attempts.push(Attempt::put("k", "c", &["b"], Acked));
    let report = check(&h, &finals(&["c"]));
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.present, report.superseded), (1, 2));
}

#[test]
fn a_deleted_key_readable_again_is_caught() {
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "b", &["a"], Acked),
        Attempt::put("k", "u", &[], Unknown),
        Attempt::put("k", "c", &["b", "u"], Acked),
        Attempt::delete("k", "x1", &["c"], Acked),
    ]);
    assert!(check(&h, &finals(&[])).is_ok());
    for back in ["a", "b", "c", "u"] {
        let report = check(&h, &finals(&[back]));
        assert!(report.lost.is_empty() && report.phantom.is_empty());
        let r = &report.resurrected;
        assert_eq!(r.len(), 1, "{back}: {report}");
        assert_eq!((r[0].value.as_str(), r[0].by_delete), (back, true));
        assert!(report.to_string().contains("after delete x1"), "{report}");
    }
}

#[test]
fn an_overwritten_value_readable_again_is_caught() {
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "b", &["a"], Acked),
    ]);
    let report = check(&h, &finals(&["a", "b"]));
    assert_eq!(report.resurrected.len(), 1, "{report}");
    assert_eq!(report.resurrected[0].by, "b");
    // An unknown write supersedes only if it was applied.
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "u", &["a"], Unknown),
        Attempt::delete("k", "x1", &["a"], Unknown),
    ]);
    assert!(check(&h, &finals(&["a"])).is_ok());
    assert_eq!(check(&h, &finals(&["a", "u"])).resurrected.len(), 1);
}

#[test]
fn phantom_values_are_caught() {
    let h = history(vec![
        Attempt::put("k", "a", &[], Acked),
        Attempt::put("k", "b", &["a", "ghost"], Acked),
        Attempt::put("other", "o", &[], Acked),
    ]);
    let mut state = finals(&["b", "o", "junk"]);
    state.insert("other".into(), ["o".to_string()].into());
    state.insert("never-written".into(), ["zz".to_string()].into());
    let report = check(&h, &state);
    let mut phantoms: Vec<(&str, &str)> = report
        .phantom
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    phantoms.sort();
    assert_eq!(
        phantoms,
        [
            ("k", "ghost"),
            ("k", "junk"),
            ("k", "o"),
            ("never-written", "zz")
        ],
        "{report}"
    );
    assert!(report.lost.is_empty() && !report.is_ok());
}

/// Quorum reads and writes over few keys, through every node in turn: a fixed number of ops
/// (about 3 s in a debug build) rather than a duration, so a slow machine runs the same load,
/// only slower.
fn quorum_options(writers: usize, keys: usize, nodes: &[String]) -> WorkloadOptions {
    WorkloadOptions {
        writers,
        keys,
        ops_per_writer: Some(OPS_PER_WRITER),
        duration: None,
        r: Some(Consistency::Quorum),
        w: Some(Consistency::Quorum),
        route: Route::RoundRobin(nodes.to_vec()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_cluster_with_contexts_passes_the_checker() {
    let c = TestCluster::start_replicated("wk", 3, 3, "").await;
    let client = c.client().await;
    // Six writers: under the sibling bound of 8, which would otherwise prune acked writes.
    let opts = WorkloadOptions {
        delete_share: 0.1,
        ..quorum_options(6, 6, &c.ids)
    };
    let run = workload::run(&client, &opts).await;
    let state = workload::read_final(&client, &opts.key_names(), Duration::from_secs(30)).await;
    let report = check(&run.history, &state);
    eprintln!("healthy: {report}\n{:?}", run.counts);
    assert!(report.is_ok(), "{report}\n{:?}", run.counts);
    assert!(
        run.counts.acked >= run.counts.ops / 2,
        "a healthy cluster refused most writes: {:?}",
        run.counts
    );
    assert!(
        report.present > 0 && report.superseded > 0 && run.counts.deletes > 0,
        "{report}\n{:?}",
        run.counts
    );
    let siblings = run.history.attempts.iter().filter(|a| a.read.len() > 1);
    let siblings = siblings.count();
    eprintln!("healthy: {siblings} reads saw siblings");
    assert!(
        siblings > 0,
        "concurrent writers never made siblings: {:?}",
        run.counts
    );
}

/// Last-write-wins keeps one version of concurrent writes, and blind writes supersede whatever
/// their coordinator holds. Eight writers on two keys through three coordinators keep reading
/// the same version and writing over it: each key sees four writers racing in every
/// read-to-write window, so an acknowledged value is routinely overwritten before anyone reads
/// it. Nothing that saw it superseded it, so it is lost, and the checker must say so.
#[tokio::test(flavor = "multi_thread")]
async fn blind_last_write_wins_writes_are_reported_lost() {
    let c = TestCluster::start_replicated("wl", 3, 3, "[conflicts]\nmode = \"lww\"\n").await;
    let client = c.client().await;
    let opts = WorkloadOptions {
        blind: true,
        route: Route::PerWriter(c.ids.clone()),
        ..quorum_options(8, 2, &c.ids)
    };
    let run = workload::run(&client, &opts).await;
    let state = workload::read_final(&client, &opts.key_names(), Duration::from_secs(30)).await;
    assert!(
        state.values().all(|v| v.len() <= 1),
        "last-write-wins kept siblings: {state:?}"
    );
    let report = check(&run.history, &state);
    assert!(
        run.counts.acked >= run.counts.ops / 2,
        "a healthy cluster refused most writes: {:?}",
        run.counts
    );
    assert!(
        !report.lost.is_empty(),
        "the checker accepted last-write-wins: {report}"
    );
    assert!(report.phantom.is_empty(), "{report}");
    eprintln!("negative control: {report}\n{:?}", run.counts);
}
