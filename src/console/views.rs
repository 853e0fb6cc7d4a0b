//! The console's cluster views (`status`, `members`, `ring`, `stats`) and the table and
//! per-node helpers they share with the other views.

use std::future::Future;

use ringkv_actors::protocol::{MemberView, NodeStatus, RingView, VnodeHealth, VnodeInfo};
use serde_json::{Map, Value, json};

use super::{Reply, ok};
use crate::{Client, KvError};

/// Asks every member at once, so one unresponsive node costs one timeout, not one each.
pub(super) async fn per_node<T, F, Fut>(
    client: &Client,
    ask: F,
) -> Vec<(String, Result<T, KvError>)>
where
    T: Send + 'static,
    F: Fn(Client, String) -> Fut,
    Fut: Future<Output = Result<T, KvError>> + Send + 'static,
{
    let ids = client.member_ids();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| tokio::spawn(ask(client.clone(), id.clone())))
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for (id, task) in ids.into_iter().zip(tasks) {
        let answer = task
            .await
            .unwrap_or_else(|e| Err(KvError::NotConnected(format!("query failed: {e}"))));
        redial_if_down(client, &id, &answer).await;
        out.push((id, answer));
    }
    out
}

/// Pings a member that was not connected: the SDK redials a member only when a request is
/// routed to it, so a restarted node shows up again at the console's next command.
pub(super) async fn redial_if_down<T>(client: &Client, id: &str, answer: &Result<T, KvError>) {
    if matches!(answer, Err(KvError::NotConnected(_))) {
        let _ = client.ping(Some(id)).await;
    }
}

/// Left-aligns columns two blanks apart; a row's last cell is left out of the widths so a
/// long trailing note (an error) does not stretch the table.
pub(super) fn table(rows: Vec<Vec<String>>) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(cell.len()),
                None => widths.push(cell.len()),
            }
        }
    }
    rows.iter()
        .map(|row| {
            let cells = row.iter().enumerate();
            let line: String = cells
                .map(|(i, c)| format!("{c:<w$}  ", w = widths.get(i).copied().unwrap_or(0)))
                .collect();
            line.trim_end().to_string()
        })
        .collect()
}

/// A header row: column titles separated by `|`.
pub(super) fn header(titles: &str) -> Vec<Vec<String>> {
    vec![titles.split('|').map(String::from).collect()]
}

/// Per-node JSON: `up` with the node's figures, or `up: false` with the reason.
pub(super) fn nodes_json<T>(
    answers: &[(String, Result<T, KvError>)],
    id_key: &str,
    figures: impl Fn(&T) -> Value,
) -> Result<Reply, String> {
    let nodes: Vec<Value> = answers
        .iter()
        .map(|(id, answer)| {
            let mut v = match answer {
                Ok(t) => figures(t),
                Err(e) => json!({ "error": e.to_string() }),
            };
            v[id_key] = json!(id);
            v["up"] = json!(answer.is_ok());
            v
        })
        .collect();
    ok(json!({ "nodes": nodes }))
}

/// A table row for a member that did not answer, with why.
pub(super) fn down_row(id: &str, e: &KvError) -> Vec<String> {
    vec![id.to_string(), "down".into(), format!("({e})")]
}

fn not_serving(s: &NodeStatus) -> Vec<VnodeInfo> {
    let vnodes = s.vnodes.iter().filter(|v| v.health != VnodeHealth::Serving);
    vnodes.cloned().collect()
}

/// `status`: each member's ring, durability and vnode health.
pub(super) async fn status(client: &Client, json: bool) -> Result<Reply, String> {
    let answers = per_node(client, |c, id| async move { c.node_status(&id).await }).await;
    if json {
        return nodes_json(&answers, "id", |s| {
            let bad = not_serving(s);
            json!({
                "ring_version": s.ring_version, "ring_hash": format!("{:016x}", s.ring_hash),
                "ring_agreed": s.ring_agreed, "durability": s.durability,
                "partitions": s.partitions, "vnodes_serving": s.vnodes.len() - bad.len(),
                "vnodes_total": s.vnodes.len(), "not_serving": bad,
                "hints_waiting": s.hints_waiting, "hints_delivered": s.hints_delivered,
                "quarantined": s.vnodes.iter().flat_map(|v| v.quarantined.clone()).collect::<Vec<_>>(),
            })
        });
    }
    let mut rows = header("NODE|STATE|RING HASH|AGREED|DURABILITY|VNODES|HINTS");
    let mut notes = vec!["vnodes not serving:".to_string()];
    let mut moved = vec!["vnode files moved aside:".to_string()];
    for (id, answer) in &answers {
        let s = match answer {
            Ok(s) => s,
            Err(e) => {
                rows.push(down_row(id, e));
                continue;
            }
        };
        let bad = not_serving(s);
        rows.push(vec![
            id.clone(),
            "up".into(),
            format!("{:016x}", s.ring_hash),
            if s.ring_agreed { "yes" } else { "no" }.into(),
            s.durability.clone(),
            format!("{}/{}", s.vnodes.len() - bad.len(), s.vnodes.len()),
            s.hints_waiting.to_string(),
        ]);
        for v in &s.vnodes {
            moved.extend(
                v.quarantined
                    .iter()
                    .map(|f| format!("  {id} partition {}: {f}", v.partition)),
            );
        }
        notes.extend(bad.iter().map(|v| {
            format!(
                "  {id} partition {}: {:?}, {} restarts",
                v.partition, v.health, v.restarts
            )
        }));
    }
    let mut lines = table(rows);
    for extra in [notes, moved] {
        if extra.len() > 1 {
            lines.extend(extra);
        }
    }
    ok(lines.join("\n"))
}

/// `members`: every answering node's up/down verdict on each member.
pub(super) async fn members(client: &Client, json: bool) -> Result<Reply, String> {
    let mut views: Vec<(String, Vec<MemberView>)> = Vec::new();
    let mut silent = Vec::new();
    for (id, answer) in per_node(client, |c, id| async move { c.members(&id).await }).await {
        match answer {
            Ok(v) => views.push((id, v)),
            Err(e) => silent.push(format!("{id} ({e})")),
        }
    }
    if views.is_empty() {
        return Err(format!("no member answered: {}", silent.join("; ")));
    }
    let ids = client.member_ids();
    let verdict = |view: &[MemberView], id: &str| view.iter().find(|m| m.id == id).map(|m| m.up);
    let addr = |id: &str| {
        let mut all = views.iter().flat_map(|(_, v)| v);
        all.find(|m| m.id == id)
            .map_or_else(|| "?".into(), |m| m.addr.clone())
    };
    if json {
        let rows: Vec<Value> = ids
            .iter()
            .map(|id| {
                let seen: Map<String, Value> = views
                    .iter()
                    .filter_map(|(o, v)| verdict(v, id).map(|up| (o.clone(), json!(up))))
                    .collect();
                json!({ "id": id, "addr": addr(id), "views": seen })
            })
            .collect();
        return ok(json!({ "members": rows }));
    }
    let mut rows = header("MEMBER|ADDR");
    rows[0].extend(views.iter().map(|(o, _)| format!("{o}'s view")));
    for id in &ids {
        let mut row = vec![id.clone(), addr(id)];
        row.extend(views.iter().map(|(_, v)| match verdict(v, id) {
            Some(true) => "up".to_string(),
            Some(false) => "down".into(),
            None => "?".into(),
        }));
        rows.push(row);
    }
    let mut lines = table(rows);
    if !silent.is_empty() {
        lines.push(format!("did not answer: {}", silent.join("; ")));
    }
    ok(lines.join("\n"))
}

/// How many preference lists hold each node: the configured members in order (zero
/// included), then any other id the ring names.
pub fn vnodes_per_node(ring: &RingView, members: &[String]) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = members.iter().map(|m| (m.clone(), 0)).collect();
    for id in ring.preference_lists.iter().flatten() {
        match counts.iter_mut().find(|(m, _)| m == id) {
            Some((_, n)) => *n += 1,
            None => counts.push((id.clone(), 1)),
        }
    }
    counts
}

/// The ring as the first member that answers sees it, with that member's id.
pub(super) async fn first_ring(client: &Client) -> Result<(String, RingView), String> {
    let mut failures = Vec::new();
    for id in client.member_ids() {
        match client.ring(&id).await {
            Ok(r) => return Ok((id, r)),
            Err(e) => failures.push(format!("{id} ({e})")),
        }
    }
    Err(format!("no member answered: {}", failures.join("; ")))
}

/// `ring`: partition -> preference list, and vnodes per node.
pub(super) async fn ring(client: &Client, json: bool) -> Result<Reply, String> {
    let (from, ring) = first_ring(client).await?;
    let counts = vnodes_per_node(&ring, &client.member_ids());
    if json {
        let per_node: Map<String, Value> =
            counts.into_iter().map(|(id, n)| (id, json!(n))).collect();
        return ok(json!({
            "from": from, "version": ring.version, "partitions": ring.partitions,
            "replicas": ring.replicas, "preference_lists": ring.preference_lists,
            "vnodes_per_node": per_node,
        }));
    }
    let mut lines = vec![format!(
        "ring version {} as {from} sees it: {} partitions, {} replicas",
        ring.version, ring.partitions, ring.replicas
    )];
    let pw = ring.partitions.saturating_sub(1).to_string().len();
    for (p, prefs) in ring.preference_lists.iter().enumerate() {
        lines.push(format!("  {p:>pw$}  {}", prefs.join(" ")));
    }
    let per_node: Vec<String> = counts.iter().map(|(id, n)| format!("{id}={n}")).collect();
    lines.push(format!("vnodes per node: {}", per_node.join(" ")));
    ok(lines.join("\n"))
}

/// `stats`: each member's load figures.
pub(super) async fn stats(client: &Client, json: bool) -> Result<Reply, String> {
    let answers = per_node(client, |c, id| async move { c.stats(&id).await }).await;
    if json {
        return nodes_json(&answers, "node", |s| json!(s));
    }
    let mut rows =
        header("NODE|OPS/S|P99 MS|VNODES|MAILBOX|IN FLIGHT|CPU %|MEM %|DISK %|REFUSED/S");
    for (id, answer) in &answers {
        rows.push(match answer {
            Ok(s) => vec![
                id.clone(),
                format!("{:.1}", s.ops_per_sec),
                format!("{:.2}", s.p99_ms),
                s.vnodes.to_string(),
                s.mailbox_depth.to_string(),
                s.in_flight.to_string(),
                format!("{:.0}", s.cpu_pct),
                format!("{:.1}", s.mem_pct),
                format!("{:.0}", s.disk_pct),
                format!("{:.1}", s.overloaded_per_sec),
            ],
            Err(e) => down_row(id, e),
        });
    }
    ok(table(rows).join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_vnodes_per_member_in_member_order() {
        let preference_lists = [["b", "a"], ["b", "x"]].map(|l| l.map(String::from).to_vec());
        let (version, partitions, replicas) = (1, 2, 2);
        let preference_lists = preference_lists.to_vec();
        let ring = RingView {
            version,
            partitions,
            replicas,
            read_lists: preference_lists.clone(),
            preference_lists,
            stage: "stable".into(),
            members: Vec::new(),
        };
        let members = ["a", "b", "c"].map(String::from);
        let counts = [("a", 1), ("b", 2), ("c", 0), ("x", 1)].map(|(id, n)| (id.to_string(), n));
        assert_eq!(vnodes_per_node(&ring, &members), counts);
    }

    #[test]
    fn table_aligns_all_but_trailing_notes() {
        let rows = [
            header("ID|STATE|X"),
            header("n1|up|1"),
            header("node2|down (gone)"),
        ];
        let lines = ["ID     STATE  X", "n1     up     1", "node2  down (gone)"];
        assert_eq!(table(rows.concat()), lines);
    }
}
