//! The console's anti-entropy views: `aae` (every partition's merkle roots across its
//! replicas) and `aae run` (an on-demand exchange round on each member).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringkv_actors::protocol::{AaeRound, AaeView, RingView};
use serde_json::{Map, Value, json};

use super::views::{down_row, first_ring, header, nodes_json, per_node, redial_if_down, table};
use super::{Reply, ok};
use crate::{Client, KvError};

/// An `aae run` round repairs every local partition before it answers, so it gets far
/// longer than an ordinary admin request.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// One partition as its replicas report it.
#[derive(Debug, PartialEq, Eq)]
struct PartitionAae {
    partition: u32,
    /// Each replica of the preference list, in its order, with its root when it reported one.
    roots: Vec<(String, Option<u64>)>,
    /// Every replica reported a root and all are the same; an unknown root counts as a
    /// difference, since it is not known to agree.
    equal: bool,
    /// The most recent exchange of any replica (unix ms).
    last_exchange_ms: Option<u64>,
    /// Summed over the replicas.
    keys_repaired: u64,
}

/// Joins each partition's preference list with what its replicas reported.
fn partitions(ring: &RingView, views: &[(String, Result<AaeView, KvError>)]) -> Vec<PartitionAae> {
    let report = |node: &str, partition: u32| {
        let view = views.iter().find(|(id, _)| id == node)?.1.as_ref().ok()?;
        view.partitions.iter().find(|p| p.partition == partition)
    };
    let prefs = ring.preference_lists.iter();
    (0u32..)
        .zip(prefs)
        .map(|(partition, replicas)| {
            let reports: Vec<_> = replicas.iter().map(|n| report(n, partition)).collect();
            let roots: Vec<(String, Option<u64>)> = replicas
                .iter()
                .zip(&reports)
                .map(|(n, r)| (n.clone(), r.and_then(|r| r.root)))
                .collect();
            let first = roots.first().and_then(|(_, r)| *r);
            let equal = first.is_some() && roots.iter().all(|(_, r)| *r == first);
            let found = reports.iter().flatten();
            PartitionAae {
                partition,
                roots,
                equal,
                last_exchange_ms: found.clone().filter_map(|r| r.last_exchange_ms).max(),
                keys_repaired: found.map(|r| r.keys_repaired).sum(),
            }
        })
        .collect()
}

fn hex(root: Option<u64>) -> String {
    root.map_or_else(|| "-".into(), |r| format!("{r:016x}"))
}

/// "Ns ago" from unix ms; a clock behind the node's reads as 0s rather than negative.
fn ago(last_ms: Option<u64>, now_ms: u64) -> String {
    match last_ms {
        Some(t) => format!("{}s ago", now_ms.saturating_sub(t) / 1000),
        None => "never".into(),
    }
}

fn now_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

fn render_json(parts: &[PartitionAae], silent: &[(String, String)]) -> Value {
    let list: Vec<Value> = parts
        .iter()
        .map(|p| {
            let roots: Map<String, Value> = p
                .roots
                .iter()
                .map(|(n, r)| (n.clone(), r.map_or(Value::Null, |_| json!(hex(*r)))))
                .collect();
            json!({
                "partition": p.partition, "roots": roots, "equal": p.equal,
                "last_exchange_ms": p.last_exchange_ms, "keys_repaired": p.keys_repaired,
            })
        })
        .collect();
    let silent: Map<String, Value> = silent.iter().map(|(n, e)| (n.clone(), json!(e))).collect();
    json!({
        "partitions": list, "all_equal": parts.iter().all(|p| p.equal),
        "did_not_answer": silent,
    })
}

fn render_text(parts: &[PartitionAae], silent: &[(String, String)], now_ms: u64) -> String {
    let mut rows = header("PARTITION|REPLICA ROOTS|ROOTS|LAST EXCHANGE|REPAIRED");
    for p in parts {
        let roots: Vec<String> = p
            .roots
            .iter()
            .map(|(n, r)| format!("{n}={}", hex(*r)))
            .collect();
        rows.push(vec![
            p.partition.to_string(),
            roots.join(" "),
            if p.equal { "equal" } else { "DIFFER" }.into(),
            ago(p.last_exchange_ms, now_ms),
            p.keys_repaired.to_string(),
        ]);
    }
    let mut lines = table(rows);
    let differ = parts.iter().filter(|p| !p.equal).count();
    lines.push(match differ {
        0 => format!("all {} partitions equal", parts.len()),
        n => format!("{n} of {} partitions DIFFER", parts.len()),
    });
    if !silent.is_empty() {
        let silent: Vec<String> = silent.iter().map(|(n, e)| format!("{n} ({e})")).collect();
        lines.push(format!("did not answer: {}", silent.join("; ")));
    }
    lines.join("\n")
}

/// `aae`: every member's merkle roots, lined up per partition by the ring's preference lists.
pub(super) async fn aae(client: &Client, json: bool) -> Result<Reply, String> {
    let (_, ring) = first_ring(client).await?;
    let views = per_node(client, |c, id| async move { c.aae(&id).await }).await;
    let parts = partitions(&ring, &views);
    let silent: Vec<(String, String)> = views
        .iter()
        .filter_map(|(id, v)| v.as_ref().err().map(|e| (id.clone(), e.to_string())))
        .collect();
    if json {
        ok(render_json(&parts, &silent))
    } else {
        ok(render_text(&parts, &silent, now_ms()))
    }
}

/// `aae run`: one anti-entropy round on each member in turn, since concurrent rounds would
/// exchange the same partitions twice over.
pub(super) async fn aae_run(client: &Client, json: bool) -> Result<Reply, String> {
    let mut answers: Vec<(String, Result<AaeRound, KvError>)> = Vec::new();
    for id in client.member_ids() {
        let answer = client.aae_run(&id, RUN_TIMEOUT).await;
        redial_if_down(client, &id, &answer).await;
        answers.push((id, answer));
    }
    if json {
        return nodes_json(&answers, "node", |r| json!(r));
    }
    let mut rows = header("NODE|EXCHANGES|REPAIRED|REAPED|MS|ERRORS");
    let mut notes = vec!["errors:".to_string()];
    for (id, answer) in &answers {
        rows.push(match answer {
            Ok(r) => {
                notes.extend(r.errors.iter().map(|e| format!("  {id}: {e}")));
                vec![
                    id.clone(),
                    r.exchanges.to_string(),
                    r.keys_repaired.to_string(),
                    r.tombstones_reaped.to_string(),
                    r.millis.to_string(),
                    r.errors.len().to_string(),
                ]
            }
            Err(e) => down_row(id, e),
        });
    }
    let mut lines = table(rows);
    if notes.len() > 1 {
        lines.extend(notes);
    }
    ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use ringkv_actors::protocol::AaePartition;

    use super::*;

    fn view(node: &str, parts: &[(u32, Option<u64>, Option<u64>, u64)]) -> AaeView {
        let partitions = parts
            .iter()
            .map(
                |&(partition, root, last_exchange_ms, keys_repaired)| AaePartition {
                    partition,
                    root,
                    last_exchange_ms,
                    exchanges: 1,
                    keys_repaired,
                },
            )
            .collect();
        let node = node.into();
        AaeView { node, partitions }
    }

    fn two_partition_ring() -> RingView {
        let preference_lists = [["a", "b"], ["b", "c"]].map(|l| l.map(String::from).to_vec());
        RingView {
            version: 1,
            partitions: 2,
            replicas: 2,
            preference_lists: preference_lists.to_vec(),
            stage: "stable".into(),
            members: Vec::new(),
            read_lists: preference_lists.to_vec(),
        }
    }

    #[test]
    fn lines_up_replica_roots_per_partition() {
        let views = vec![
            (
                "a".to_string(),
                Ok(view("a", &[(0, Some(7), Some(1_000), 2)])),
            ),
            (
                "b".to_string(),
                Ok(view(
                    "b",
                    &[(0, Some(7), Some(5_000), 1), (1, Some(9), None, 0)],
                )),
            ),
            ("c".to_string(), Err(KvError::Timeout)),
        ];
        let parts = partitions(&two_partition_ring(), &views);
        let roots = |r: &[(&str, Option<u64>)]| -> Vec<(String, Option<u64>)> {
            r.iter().map(|&(n, r)| (n.to_string(), r)).collect()
        };
        let expected = [
            PartitionAae {
                partition: 0,
                roots: roots(&[("a", Some(7)), ("b", Some(7))]),
                equal: true,
                last_exchange_ms: Some(5_000),
                keys_repaired: 3,
            },
            PartitionAae {
                partition: 1,
                roots: roots(&[("b", Some(9)), ("c", None)]),
                equal: false,
                last_exchange_ms: None,
                keys_repaired: 0,
            },
        ];
        assert_eq!(parts, expected);

        let silent = [("c".to_string(), "timeout".to_string())];
        let v = render_json(&parts, &silent);
        assert_eq!(v["all_equal"], false);
        assert_eq!(v["partitions"][0]["roots"]["a"], "0000000000000007");
        assert_eq!(v["partitions"][1]["roots"]["c"], Value::Null);
        assert_eq!(v["partitions"][0]["last_exchange_ms"], 5_000);

        let text = render_text(&parts, &silent, 17_500);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("a=0000000000000007 b=0000000000000007"),
            "{text}"
        );
        assert!(
            lines[1].contains("equal") && lines[1].contains("12s ago"),
            "{text}"
        );
        assert!(
            lines[2].contains("c=-") && lines[2].contains("DIFFER"),
            "{text}"
        );
        assert!(lines[2].contains("never"), "{text}");
        assert_eq!(lines[3], "1 of 2 partitions DIFFER");
        assert_eq!(lines[4], "did not answer: c (timeout)");
    }

    #[test]
    fn differing_roots_differ_and_clock_skew_reads_as_now() {
        let views = vec![
            ("a".to_string(), Ok(view("a", &[(0, Some(1), None, 0)]))),
            ("b".to_string(), Ok(view("b", &[(0, Some(2), None, 0)]))),
        ];
        let parts = partitions(&two_partition_ring(), &views);
        assert!(!parts[0].equal);
        assert_eq!(ago(Some(2_000), 1_000), "0s ago");
        assert_eq!(ago(None, 1_000), "never");
    }
}
