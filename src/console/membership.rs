//! Membership commands, shared by the CLI (`ringkv cluster join …`) and the console (`join …`):
//! one clap definition, one renderer.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringkv_actors::core::placement::Change;
use ringkv_actors::protocol::{MembershipRequest, MembershipView, TransferView};
use serde_json::json;

use crate::Client;

/// A membership command.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ChangeCmd {
    /// Stage adding node ID, listening at ADDR (start it with `ringkv node --node ID --addr ADDR --join MEMBER`).
    Join {
        /// New node's id.
        id: String,
        /// Its address, ip:port.
        addr: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stage removing node ID once it handed its partitions off.
    Leave {
        /// The node to remove.
        id: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stage handing every partition of OLD to the new node NEW at ADDR.
    Replace {
        /// The node to retire.
        old: String,
        /// The node taking over.
        new: String,
        /// Its address, ip:port.
        addr: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show what committing the staged changes would move.
    Plan {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Commit the staged changes; refused if the plan changed since it was shown.
    Commit {
        /// The plan hash `plan` printed (default: the plan last shown).
        #[arg(long)]
        plan: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Drop every staged change.
    Clear {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Each partition streaming to a new replica: from, to, keys and bytes, rate, ETA, stalls.
    Transfers {
        /// Refresh every 2 s until nothing moves.
        #[arg(long)]
        watch: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// A console line holding one membership command.
#[derive(Parser)]
#[command(name = "console", no_binary_name = true, disable_help_flag = true)]
struct Line {
    #[command(subcommand)]
    cmd: ChangeCmd,
}

/// The words that start a membership command in the console.
pub const WORDS: [&str; 7] = [
    "join",
    "leave",
    "replace",
    "plan",
    "commit",
    "clear",
    "transfers",
];

/// Parses a console line that starts with one of [`WORDS`], with the CLI's own definition.
pub fn parse(line: &str) -> Result<ChangeCmd, String> {
    Line::try_parse_from(line.split_whitespace())
        .map(|l| l.cmd)
        .map_err(|e| e.render().to_string().trim_end().to_string())
}

/// Asks for JSON output (the console's `--json` applies to every command).
pub fn set_json(cmd: &mut ChangeCmd) {
    *json_flag(cmd) = true;
}

fn json_flag(cmd: &mut ChangeCmd) -> &mut bool {
    match cmd {
        ChangeCmd::Join { json, .. }
        | ChangeCmd::Leave { json, .. }
        | ChangeCmd::Replace { json, .. }
        | ChangeCmd::Plan { json }
        | ChangeCmd::Commit { json, .. }
        | ChangeCmd::Clear { json }
        | ChangeCmd::Transfers { json, .. } => json,
    }
}

fn json_of(cmd: &ChangeCmd) -> bool {
    *json_flag(&mut cmd.clone())
}

/// Renders the claimant's answer: epoch, staged changes and the plan's moves.
pub fn render_view(v: &MembershipView) -> String {
    let mut out = vec![format!(
        "claimant {}, epoch {} ({}), members {}",
        v.claimant,
        v.epoch,
        v.stage,
        v.members.join(" ")
    )];
    if !v.note.is_empty() {
        out.push(v.note.clone());
    }
    if !v.staged.is_empty() {
        out.push(format!("staged: {}", v.staged.join("; ")));
    }
    if v.plan_epoch > 0 {
        out.push(format!(
            "plan: epoch {}, members {}; {} replicas move (ideal {}), ~{:.1} MB, ~{:.0} s at the configured throttle",
            v.plan_epoch,
            v.plan_members.join(" "),
            v.replicas_moved,
            v.replicas_ideal,
            v.bytes as f64 / 1e6,
            v.eta_secs
        ));
    }
    for m in &v.moves {
        let released = if m.released.is_empty() {
            String::new()
        } else {
            format!(", releases {}", m.released.join(","))
        };
        let done = if m.done { " (streamed in)" } else { "" };
        out.push(format!(
            "  partition {:>4}: {} <- {}{released}, ~{} keys, ~{:.1} KB{done}",
            m.partition,
            m.targets.join(","),
            m.sources.join(","),
            m.keys,
            m.bytes as f64 / 1e3
        ));
    }
    if v.plan_epoch > 0 {
        out.push(format!(
            "plan hash {:016x}: commit with `ringkv cluster commit --plan {:016x}`",
            v.plan_hash, v.plan_hash
        ));
    }
    out.join("\n")
}

/// Renders transfer lines, one per partition and target.
pub fn render_transfers(lines: &[TransferView]) -> String {
    if lines.is_empty() {
        return "no transfers".into();
    }
    let mut out = vec![format!(
        "{:>9} {:<6} {:<6} {:<10} {:>9} {:>10} {:>9} {:>8}  why",
        "partition", "from", "to", "state", "keys", "MB", "MB/s", "ETA s"
    )];
    for t in lines {
        out.push(format!(
            "{:>9} {:<6} {:<6} {:<10} {:>9} {:>10.2} {:>9.1} {:>8}  {}",
            t.partition,
            t.from,
            t.to,
            t.state,
            if t.total_keys > 0 {
                format!("{}/{}", t.keys, t.total_keys)
            } else {
                t.keys.to_string()
            },
            t.bytes as f64 / 1e6,
            t.rate / 1e6,
            t.eta_secs.map_or("-".into(), |e| format!("{e:.0}")),
            t.why
        ));
    }
    out.join("\n")
}

/// Every member's transfers, by partition.
pub async fn all_transfers(client: &Client) -> Vec<TransferView> {
    let mut lines = Vec::new();
    for node in client.member_ids() {
        lines.extend(client.transfers(&node).await.unwrap_or_default());
    }
    lines.sort_by(|a, b| (a.partition, &a.to).cmp(&(b.partition, &b.to)));
    lines
}

fn parse_hash(h: &str) -> Result<u64, String> {
    u64::from_str_radix(h.trim_start_matches("0x"), 16)
        .map_err(|_| format!("--plan takes the hex hash `plan` printed, got {h:?}"))
}

/// Runs `cmd`, returning what to print or the error line.
pub async fn execute(client: &Client, cmd: &ChangeCmd) -> Result<String, String> {
    let json = json_of(cmd);
    let view = |r: Result<MembershipView, crate::KvError>| {
        r.map_err(|e| e.to_string()).map(|v| {
            if json {
                serde_json::to_string(&v).expect("views serialize")
            } else {
                render_view(&v)
            }
        })
    };
    match cmd {
        ChangeCmd::Join { id, addr, .. } => view(
            client
                .stage(Change::Join {
                    id: id.clone(),
                    addr: addr.clone(),
                })
                .await,
        ),
        ChangeCmd::Leave { id, .. } => view(client.stage(Change::Leave { id: id.clone() }).await),
        ChangeCmd::Replace { old, new, addr, .. } => view(
            client
                .stage(Change::Replace {
                    old: old.clone(),
                    new: new.clone(),
                    addr: addr.clone(),
                })
                .await,
        ),
        ChangeCmd::Plan { .. } => view(client.plan().await),
        ChangeCmd::Commit { plan, .. } => {
            let hash = plan.as_deref().map(parse_hash).transpose()?.unwrap_or(0);
            view(client.commit(hash).await)
        }
        ChangeCmd::Clear { .. } => view(client.membership(MembershipRequest::Clear).await),
        ChangeCmd::Transfers { watch, .. } => loop {
            let lines = all_transfers(client).await;
            let text = if json {
                json!({ "transfers": lines }).to_string()
            } else {
                render_transfers(&lines)
            };
            let moving = lines.iter().any(|t| t.state != "done");
            if !*watch || !moving {
                return Ok(text);
            }
            println!("{text}\n");
            tokio::time::sleep(Duration::from_secs(2)).await;
        },
    }
}

/// The CLI's entry: prints the result and exits 0, or the error and exits 2.
pub async fn run_cli(client: &Client, cmd: ChangeCmd) -> ExitCode {
    match execute(client, &cmd).await {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_parse_with_the_cli_definition() {
        assert_eq!(
            parse("join n4 127.0.0.1:7404"),
            Ok(ChangeCmd::Join {
                id: "n4".into(),
                addr: "127.0.0.1:7404".into(),
                json: false
            })
        );
        assert_eq!(
            parse("commit --plan 00ff"),
            Ok(ChangeCmd::Commit {
                plan: Some("00ff".into()),
                json: false
            })
        );
        assert!(parse("join n4").unwrap_err().contains("ADDR"));
        assert_eq!(parse_hash("00ff"), Ok(255));
        assert!(parse_hash("zz").is_err());
    }
}
