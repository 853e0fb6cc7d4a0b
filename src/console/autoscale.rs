//! The console's `autoscale` view: which node decides, what it is doing, the signals it last
//! read from every member, and its recent decisions with their results.

use ringkv_actors::protocol::AutoscaleView;
use serde_json::json;

use super::views::{header, per_node, table};
use super::{Reply, ok};
use crate::Client;

/// Decisions shown in the table (the JSON carries all the node keeps).
const SHOWN: usize = 12;

/// `autoscale`.
pub(super) async fn autoscale(client: &Client, json: bool) -> Result<Reply, String> {
    let answers = per_node(client, |c, id| async move { c.autoscale(&id).await }).await;
    let views: Vec<&AutoscaleView> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .collect();
    if views.is_empty() {
        return Err("no member answered for its autoscaler".into());
    }
    let active = views.iter().find(|v| v.active).copied();
    if json {
        let standby: Vec<_> = views
            .iter()
            .filter(|v| !v.active)
            .map(|v| json!({"node": v.node, "enabled": v.enabled, "state": v.state}))
            .collect();
        return ok(json!({ "active": active, "standby": standby }));
    }
    let Some(v) = active else {
        if views.iter().all(|v| !v.enabled) {
            return ok(
                "autoscale is off on every member: set `[autoscale] enabled = true` in cluster.toml (or start with `ringkv cluster up --autoscale`)",
            );
        }
        let states: Vec<String> = views
            .iter()
            .map(|v| format!("{}: {}", v.node, v.state))
            .collect();
        return ok(format!(
            "no autoscaler is deciding yet (it runs on the claimant):\n  {}",
            states.join("\n  ")
        ));
    };
    Ok(Reply {
        out: render(v),
        code: 0,
    })
}

fn render(v: &AutoscaleView) -> String {
    let mut out = vec![
        format!(
            "autoscale on: {} decides, provisioner {}, {} members (min {}, max {})",
            v.node, v.provisioner, v.members, v.min_nodes, v.max_nodes
        ),
        format!(
            "load {:.2}x target, desired size {}; state: {}{}",
            v.ratio,
            v.desired,
            v.state,
            if v.cooldown_left_secs > 0.0 {
                format!(" (cooldown {:.0} s left)", v.cooldown_left_secs)
            } else {
                String::new()
            }
        ),
        String::new(),
    ];
    let mut rows = header("NODE|CPU %|MEM %|DISK %|OPS/S|REFUSED/S");
    for s in &v.signals {
        rows.push(if s.answered {
            vec![
                s.node.clone(),
                format!("{:.0}", s.cpu_pct),
                format!("{:.1}", s.mem_pct),
                format!("{:.0}", s.disk_pct),
                format!("{:.0}", s.ops_per_sec),
                format!("{:.1}", s.overloaded_per_sec),
            ]
        } else {
            vec![s.node.clone(), "(no answer)".into()]
        });
    }
    out.extend(table(rows));
    out.push(String::new());
    let mut rows = header("AGE|MEMBERS|DESIRED|RATIO|ACTION|REASON / RESULT");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let skip = v.decisions.len().saturating_sub(SHOWN);
    for d in v.decisions.iter().skip(skip) {
        let mut why = d.reason.clone();
        if !d.result.is_empty() {
            why.push_str(" -> ");
            why.push_str(&d.result);
        }
        rows.push(vec![
            format!("{:.0}s ago", now.saturating_sub(d.at_ms) as f64 / 1000.0),
            d.members.to_string(),
            d.desired.to_string(),
            format!("{:.2}", d.ratio),
            d.action.clone(),
            why,
        ]);
    }
    out.extend(table(rows));
    out.join("\n")
}
