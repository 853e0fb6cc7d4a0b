//! `ringkv console`: an interactive admin console (line editing, history in
//! `~/.ringkv_history`) and its one-shot script mode (`-c COMMAND`), both talking to the
//! cluster through the SDK's in-process client node.
//!
//! Script mode exits like the one-shot client commands: 0 success, 1 key not found (get),
//! 2 any error (one `error: ...` line on stderr).

mod aae;
mod autoscale;
pub mod membership;
mod views;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine;
use rustyline::error::ReadlineError;
use serde_json::{Value, json};

use crate::{Client, ClientConfig, KvError};

pub use views::vnodes_per_node;

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
    /// Each partition's merkle roots across its replicas.
    Aae,
    /// The autoscaler: who decides, signals, decisions.
    Autoscale,
    /// One anti-entropy round on each member in turn.
    AaeRun,
    /// Read a key.
    Get(String),
    /// Write a key: the value is the rest of the line after the key.
    Put(String, String),
    /// Delete a key.
    Delete(String),
    /// A membership command: join, leave, replace, plan, commit, clear, transfers.
    Change(membership::ChangeCmd),
    /// List the commands.
    Help,
    /// Leave the interactive console.
    Quit,
}

#[rustfmt::skip]
const HELP: [(&str, &str); 19] = [
    ("status", "each member: answers?, ring hash, ring agreement, durability, vnodes"),
    ("members", "every reachable node's up/down verdict on each member"),
    ("ring", "partition -> preference list, and vnodes per node"),
    ("stats", "each member's ops/s, p99 latency, vnodes, mailbox depth, in flight"),
    ("aae", "per partition: replicas' merkle roots, equal?, last exchange, keys repaired"),
    ("aae run", "run an anti-entropy round on each member in turn, and what it repaired"),
    ("autoscale", "the autoscaler: who decides, each member's signals, recent decisions"),
    ("get KEY", "print every value of KEY (exit code 1 when absent)"),
    ("put KEY VALUE", "write VALUE (the rest of the line, spaces allowed) under KEY"),
    ("delete KEY", "delete KEY"),
    ("join ID ADDR", "stage adding node ID at ADDR (started with `ringkv node --join`)"),
    ("leave ID", "stage removing node ID once it handed its partitions off"),
    ("replace OLD NEW ADDR", "stage handing every partition of OLD to NEW at ADDR"),
    ("plan", "what the staged changes move: partitions, keys, bytes, time"),
    ("commit [--plan HASH]", "commit the staged changes (refused if the plan changed)"),
    ("clear", "drop the staged changes"),
    ("transfers", "each moving partition: from, to, keys, bytes, rate, ETA, stalls"),
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
        "autoscale" => bare(Command::Autoscale),
        "aae" => match rest.to_ascii_lowercase().as_str() {
            "" => Ok(Command::Aae),
            "run" => Ok(Command::AaeRun),
            _ => Err("usage: aae [run]".into()),
        },
        w if membership::WORDS.contains(&w) => membership::parse(line).map(Command::Change),
        "help" => bare(Command::Help),
        "quit" | "exit" => bare(Command::Quit),
        "get" => key("get KEY").map(Command::Get),
        "delete" => key("delete KEY").map(Command::Delete),
        "put" => match rest.split_once(char::is_whitespace) {
            Some((k, v)) => Ok(Command::Put(k.into(), v.trim_start().into())),
            None => Err("usage: put KEY VALUE".into()),
        },
        _ => {
            let mut names: Vec<&str> = HELP
                .iter()
                .filter_map(|(u, _)| u.split(' ').next())
                .collect();
            // `aae` and `aae run` are adjacent in HELP.
            names.dedup();
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
        Command::Status => views::status(client, json).await,
        Command::Members => views::members(client, json).await,
        Command::Ring => views::ring(client, json).await,
        Command::Stats => views::stats(client, json).await,
        Command::Aae => aae::aae(client, json).await,
        Command::AaeRun => aae::aae_run(client, json).await,
        Command::Autoscale => autoscale::autoscale(client, json).await,
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
        Command::Change(cmd) => {
            let mut cmd = cmd.clone();
            if json {
                membership::set_json(&mut cmd);
            }
            membership::execute(client, &cmd).await.and_then(ok)
        }
        Command::Delete(key) => written(client.delete(key).await, json),
        Command::Help if json => {
            let list: Vec<Value> = HELP
                .iter()
                .map(|(u, a)| json!({ "usage": u, "about": a }))
                .collect();
            ok(json!({ "commands": list }))
        }
        Command::Help => ok(HELP.map(|(u, a)| format!("  {u:<22} {a}")).join("\n")),
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
            ("aae", Command::Aae),
            ("AAE  Run ", Command::AaeRun),
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
        assert_eq!(e.matches("aae").count(), 1, "{e}");
    }

    #[test]
    fn aae_takes_only_run() {
        assert_eq!(parse_line("aae now"), Err("usage: aae [run]".into()));
        assert_eq!(parse_line("aae run now"), Err("usage: aae [run]".into()));
    }
}
