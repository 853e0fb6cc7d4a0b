//! `ringkv console`: an interactive admin console (line editing, history in
//! `~/.ringkv_history`) and its one-shot script mode (`-c COMMAND`), both talking to the
//! cluster through the SDK's in-process client node.
//!
//! Script mode exits like the one-shot client commands: 0 success, 1 key not found (get),
//! 2 any error (one `error: ...` line on stderr).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use ringkv_actors::protocol::{MemberView, NodeStatus, RingView, VnodeHealth, VnodeInfo};
use rustyline::error::ReadlineError;
use serde_json::{Map, Value, json};

use crate::{Client, ClientConfig, KvError};

/// One console command, as parsed from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Each member's status.
    Status,
    /// Each reachable node's view of the members.
    Members,
    /// The ring as the first reachable node sees it.
    Ring,
    /// Each member's load figures.
    Stats,
    /// Read a key.
    Get(String),
    /// Write a key: the value is the rest of the line after the key.
    Put(String, String),
    /// Delete a key.
    Delete(String),
    /// List the commands.
    Help,
    /// Leave the interactive console.
    Quit,
}

#[rustfmt::skip]
const HELP: [(&str, &str); 9] = [
    ("status", "each member: answers?, ring hash, ring agreement, durability, vnodes"),
    ("members", "every reachable node's up/down verdict on each member"),
    ("ring", "partition -> preference list, and vnodes per node"),
    ("stats", "each member's ops/s, p99 latency, vnodes, mailbox depth, in flight"),
    ("get KEY", "print every value of KEY (exit code 1 when absent)"),
    ("put KEY VALUE", "write VALUE (the rest of the line, spaces allowed) under KEY"),
    ("delete KEY", "delete KEY"),
    ("help", "this list"),
    ("quit", "leave the console (also `exit` or Ctrl-D)"),
];

/// Parses one console line; the error is a message for the user.
pub fn parse_line(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim_start()),
        None => (line, ""),
    };
    let bare = |cmd: Command| match rest {
        "" => Ok(cmd),
        _ => Err(format!("`{word}` takes no arguments")),
    };
    let key = |usage: &str| match rest.split_whitespace().collect::<Vec<_>>()[..] {
        [k] => Ok(k.to_string()),
        _ => Err(format!("usage: {usage}")),
    };
    match word.to_ascii_lowercase().as_str() {
        "" => Err("empty command; type `help` for the list".into()),
        "status" => bare(Command::Status),
        "members" => bare(Command::Members),
        "ring" => bare(Command::Ring),
        "stats" => bare(Command::Stats),
        "help" => bare(Command::Help),
        "quit" | "exit" => bare(Command::Quit),
        "get" => key("get KEY").map(Command::Get),
        "delete" => key("delete KEY").map(Command::Delete),
        "put" => match rest.split_once(char::is_whitespace) {
            Some((k, v)) => Ok(Command::Put(k.into(), v.trim_start().into())),
            None => Err("usage: put KEY VALUE".into()),
        },
        _ => {
            let names: Vec<&str> = HELP
                .iter()
                .filter_map(|(u, _)| u.split(' ').next())
                .collect();
            Err(format!(
                "unknown command `{word}`; type `help` for the list ({})",
                names.join(", ")
            ))
        }
    }
}

/// What a command printed and the exit code it calls for.
struct Reply {
    out: String,
    code: u8,
}

fn ok(out: impl ToString) -> Result<Reply, String> {
    let out = out.to_string();
    Ok(Reply { out, code: 0 })
}

/// Runs the console against the cluster `config` describes: `command` once when given,
/// otherwise interactively until `quit` or end of input.
pub async fn run(config: &Path, command: Option<String>, json: bool) -> ExitCode {
    // A script's typo fails at once instead of after dialing the cluster.
    let script = match command.as_deref().map(parse_line).transpose() {
        Ok(Some(Command::Quit)) => return fail("`quit` only ends the interactive console"),
        Ok(parsed) => parsed,
        Err(e) => return fail(e),
    };
    let client = match ClientConfig::from_file(config) {
        Ok(cfg) => Client::connect(cfg).await,
        Err(e) => Err(e),
    };
    match (client, script) {
        (Err(e), _) => fail(e),
        (Ok(client), None) => interactive(&client, json).await,
        (Ok(client), Some(cmd)) => match execute(&client, &cmd, json).await {
            Ok(reply) => {
                println!("{}", reply.out);
                ExitCode::from(reply.code)
            }
            Err(e) => fail(e),
        },
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

async fn interactive(client: &Client, json: bool) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot start the line editor: {e}")),
    };
    let history = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".ringkv_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    // On stderr so `--json` output on stdout stays one JSON document per line.
    eprintln!(
        "ringkv console: {} of {} members reachable; `help` lists the commands",
        client.reachable_nodes().len(),
        client.member_ids().len()
    );
    let code = loop {
        // readline blocks; a blocking thread keeps the runtime free, whatever its flavour.
        let read = tokio::task::spawn_blocking(move || {
            let line = editor.readline("ringkv> ");
            (editor, line)
        })
        .await;
        let line;
        (editor, line) = match read {
            Ok(r) => r,
            Err(e) => return fail(format!("the line editor failed: {e}")),
        };
        match line {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => {
                let _ = editor.add_history_entry(line.as_str());
                let result = match parse_line(&line) {
                    Ok(Command::Quit) => break ExitCode::SUCCESS,
                    Ok(cmd) => execute(client, &cmd, json).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(reply) => println!("{}", reply.out),
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            // Like a shell: Ctrl-C abandons the line, Ctrl-D leaves.
            Err(ReadlineError::Interrupted) => {}
            Err(ReadlineError::Eof) => break ExitCode::SUCCESS,
            Err(e) => break fail(format!("cannot read a line: {e}")),
        }
    };
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    code
}

async fn execute(client: &Client, cmd: &Command, json: bool) -> Result<Reply, String> {
    match cmd {
        Command::Status => status(client, json).await,
        Command::Members => members(client, json).await,
        Command::Ring => ring(client, json).await,
        Command::Stats => stats(client, json).await,
        Command::Get(key) => {
            let r = client.get(key).await.map_err(|e| e.to_string())?;
            let values = r.values.iter();
            let out = if json {
                let values: Vec<Value> = values.map(|v| text_or_base64(v)).collect();
                let context = r.context.to_base64();
                json!({ "key": key, "found": r.found(), "values": values, "context": context })
                    .to_string()
            } else if r.found() {
                let lines: Vec<_> = values.map(|v| String::from_utf8_lossy(v)).collect();
                lines.join("\n")
            } else {
                "(not found)".into()
            };
            let code = u8::from(!r.found());
            Ok(Reply { out, code })
        }
        Command::Put(key, value) => written(client.put(key, value).await, json),
        Command::Delete(key) => written(client.delete(key).await, json),
        Command::Help if json => {
            let list: Vec<Value> = HELP
                .iter()
                .map(|(u, a)| json!({ "usage": u, "about": a }))
                .collect();
            ok(json!({ "commands": list }))
        }
        Command::Help => ok(HELP.map(|(u, a)| format!("  {u:<14} {a}")).join("\n")),
        Command::Quit => Err("`quit` only ends the interactive console".into()),
    }
}

fn written(result: Result<crate::Context, KvError>, json: bool) -> Result<Reply, String> {
    result.map_err(|e| e.to_string())?;
    if json {
        ok(json!({ "ok": true }))
    } else {
        ok("OK")
    }
}

fn text_or_base64(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// Asks every member at once, so one unresponsive node costs one timeout, not one each.
async fn per_node<T, F, Fut>(client: &Client, ask: F) -> Vec<(String, Result<T, KvError>)>
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
        if matches!(answer, Err(KvError::NotConnected(_))) {
            // The SDK redials a member only when a request is routed to it; this ping does,
            // so a restarted node shows up again at the console's next command.
            let _ = client.ping(Some(&id)).await;
        }
        out.push((id, answer));
    }
    out
}

/// Left-aligns columns two blanks apart; a row's last cell is left out of the widths so a
/// long trailing note (an error) does not stretch the table.
fn table(rows: Vec<Vec<String>>) -> Vec<String> {
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
fn header(titles: &str) -> Vec<Vec<String>> {
    vec![titles.split('|').map(String::from).collect()]
}

/// Per-node JSON: `up` with the node's figures, or `up: false` with the reason.
fn nodes_json<T>(
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

fn down_row(id: &str, e: &KvError) -> Vec<String> {
    vec![id.to_string(), "down".into(), format!("({e})")]
}

fn not_serving(s: &NodeStatus) -> Vec<VnodeInfo> {
    let vnodes = s.vnodes.iter().filter(|v| v.health != VnodeHealth::Serving);
    vnodes.cloned().collect()
}

async fn status(client: &Client, json: bool) -> Result<Reply, String> {
    let answers = per_node(client, |c, id| async move { c.node_status(&id).await }).await;
    if json {
        return nodes_json(&answers, "id", |s| {
            let bad = not_serving(s);
            json!({
                "ring_version": s.ring_version, "ring_hash": format!("{:016x}", s.ring_hash),
                "ring_agreed": s.ring_agreed, "durability": s.durability,
                "partitions": s.partitions, "vnodes_serving": s.vnodes.len() - bad.len(),
                "vnodes_total": s.vnodes.len(), "not_serving": bad,
            })
        });
    }
    let mut rows = header("NODE|STATE|RING HASH|AGREED|DURABILITY|VNODES");
    let mut notes = vec!["vnodes not serving:".to_string()];
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
        ]);
        notes.extend(bad.iter().map(|v| {
            format!(
                "  {id} partition {}: {:?}, {} restarts",
                v.partition, v.health, v.restarts
            )
        }));
    }
    let mut lines = table(rows);
    if notes.len() > 1 {
        lines.extend(notes);
    }
    ok(lines.join("\n"))
}

async fn members(client: &Client, json: bool) -> Result<Reply, String> {
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

async fn ring(client: &Client, json: bool) -> Result<Reply, String> {
    let mut failures = Vec::new();
    let mut found = None;
    for id in client.member_ids() {
        match client.ring(&id).await {
            Ok(r) => {
                found = Some((id, r));
                break;
            }
            Err(e) => failures.push(format!("{id} ({e})")),
        }
    }
    let Some((from, ring)) = found else {
        return Err(format!("no member answered: {}", failures.join("; ")));
    };
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

async fn stats(client: &Client, json: bool) -> Result<Reply, String> {
    let answers = per_node(client, |c, id| async move { c.stats(&id).await }).await;
    if json {
        return nodes_json(&answers, "node", |s| json!(s));
    }
    let mut rows = header("NODE|OPS/S|P99 MS|VNODES|MAILBOX|IN FLIGHT");
    for (id, answer) in &answers {
        rows.push(match answer {
            Ok(s) => vec![
                id.clone(),
                format!("{:.1}", s.ops_per_sec),
                format!("{:.2}", s.p99_ms),
                s.vnodes.to_string(),
                s.mailbox_depth.to_string(),
                s.in_flight.to_string(),
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
    fn parses_bare_commands_case_insensitively() {
        let bare = [
            ("status", Command::Status),
            ("  Members \t", Command::Members),
        ];
        let more = [
            ("RING", Command::Ring),
            ("stats", Command::Stats),
            ("help", Command::Help),
        ];
        let quit = [("quit", Command::Quit), ("exit", Command::Quit)];
        for (line, cmd) in bare.into_iter().chain(more).chain(quit) {
            assert_eq!(parse_line(line), Ok(cmd), "{line:?}");
        }
        assert!(
            parse_line("status now")
                .unwrap_err()
                .contains("no arguments")
        );
    }

    #[test]
    fn put_value_is_the_rest_of_the_line() {
        let put = |k: &str, v: &str| Ok(Command::Put(k.into(), v.into()));
        assert_eq!(parse_line("put k hello world"), put("k", "hello world"));
        assert_eq!(parse_line("put k   a  b  "), put("k", "a  b"));
        assert_eq!(parse_line("put k\tv"), put("k", "v"));
        assert_eq!(parse_line("put k"), Err("usage: put KEY VALUE".into()));
        assert_eq!(parse_line("put"), Err("usage: put KEY VALUE".into()));
    }

    #[test]
    fn get_and_delete_take_exactly_one_key() {
        assert_eq!(parse_line("get k"), Ok(Command::Get("k".into())));
        assert_eq!(parse_line("delete  k "), Ok(Command::Delete("k".into())));
        assert_eq!(parse_line("get a b"), Err("usage: get KEY".into()));
        assert_eq!(parse_line("delete"), Err("usage: delete KEY".into()));
    }

    #[test]
    fn unknown_and_empty_lines_point_to_help() {
        let e = parse_line("bogus 1").unwrap_err();
        assert!(
            e.contains("`bogus`") && e.contains("help") && e.contains("put"),
            "{e}"
        );
        assert!(parse_line("   ").unwrap_err().contains("help"));
    }

    #[test]
    fn counts_vnodes_per_member_in_member_order() {
        let preference_lists = [["b", "a"], ["b", "x"]].map(|l| l.map(String::from).to_vec());
        let (version, partitions, replicas) = (1, 2, 2);
        let preference_lists = preference_lists.to_vec();
        let ring = RingView {
            version,
            partitions,
            replicas,
            preference_lists,
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
