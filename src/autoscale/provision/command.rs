//! The `command` provisioner: runs a user command through `sh -c` for each action, so any
//! orchestrator (a cloud CLI, Nomad, systemd, Ansible) can start and stop nodes.
//!
//! Both commands get `RINGKV_ACTION` (`provision` or `release`), `RINGKV_NODE_ID` (the id the
//! autoscaler suggests, or the node to stop), `RINGKV_SEED` (a live member's address to
//! `--join`) and `RINGKV_CONFIG` (this node's configuration file). `provision` must print
//! `{"id": "...", "addr": "ip:port"}` as its last line of output, once the node has been
//! started; a non-zero exit, a timeout or output without that line is an error that the
//! autoscaler logs, and it then releases the node so nothing is left half-started.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::{NodeSpec, ProvisionRequest};
use crate::autoscale::config::CommandConfig;

/// Runs the configured commands.
#[derive(Debug)]
pub struct Command {
    cfg: CommandConfig,
    config_path: PathBuf,
}

/// Lines of a failed command's stderr quoted in its error.
const STDERR_LINES: usize = 5;

impl Command {
    /// A provisioner running `cfg`'s commands for the node configured by `config_path`.
    pub fn new(cfg: CommandConfig, config_path: PathBuf) -> Command {
        Command { cfg, config_path }
    }

    /// Runs `provision` and reads the started node from its last line.
    pub async fn provision(&self, req: &ProvisionRequest) -> Result<NodeSpec, String> {
        let out = self
            .run("provision", &self.cfg.provision, &req.id, &req.seed)
            .await?;
        parse_spec(&out)
    }

    /// Runs `release` for `id`.
    pub async fn release(&self, id: &str) -> Result<(), String> {
        self.run("release", &self.cfg.release, id, "")
            .await
            .map(|_| ())
    }

    async fn run(&self, action: &str, cmd: &str, id: &str, seed: &str) -> Result<String, String> {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .env("RINGKV_ACTION", action)
            .env("RINGKV_NODE_ID", id)
            .env("RINGKV_SEED", seed)
            .env("RINGKV_CONFIG", &self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{action} command could not start: {e}"))?;
        let limit = Duration::from_secs_f64(self.cfg.timeout_secs);
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Err(_) => {
                return Err(format!(
                    "{action} command did not finish within {limit:?} (killed)"
                ));
            }
            Ok(Err(e)) => return Err(format!("{action} command failed: {e}")),
            Ok(Ok(out)) => out,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join(" | ");
            return Err(format!(
                "{action} command exited with {}: {tail}",
                out.status
            ));
        }
        Ok(stdout)
    }
}

/// The node a provision command started, from its last non-empty line of output.
fn parse_spec(stdout: &str) -> Result<NodeSpec, String> {
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).ok_or(
        "provision command printed nothing: it must print {\"id\": …, \"addr\": \"ip:port\"}",
    )?;
    let spec: NodeSpec = serde_json::from_str(last.trim()).map_err(|e| {
        format!("provision command's last line is not {{\"id\": …, \"addr\": …}}: {e}: {last}")
    })?;
    if !crate::config::valid_id(&spec.id) {
        return Err(format!(
            "provision command named node '{}': ids are letters, digits, '-' and '_'",
            spec.id
        ));
    }
    if spec.addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!(
            "provision command gave address '{}' for {}: it must be ip:port",
            spec.addr, spec.id
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provisioner(provision: &str, release: &str, timeout_secs: f64) -> Command {
        Command::new(
            CommandConfig {
                provision: provision.into(),
                release: release.into(),
                timeout_secs,
            },
            PathBuf::from("/etc/ringkv/cluster.toml"),
        )
    }

    fn req() -> ProvisionRequest {
        ProvisionRequest {
            id: "n4".into(),
            seed: "127.0.0.1:7401".into(),
        }
    }

    #[tokio::test]
    async fn provision_passes_the_request_and_reads_the_last_line() {
        let p = provisioner(
            r#"test "$RINGKV_ACTION" = provision || exit 9; echo starting; echo "{\"id\": \"$RINGKV_NODE_ID\", \"addr\": \"$RINGKV_SEED\"}""#,
            "true",
            10.0,
        );
        assert_eq!(
            p.provision(&req()).await.unwrap(),
            NodeSpec {
                id: "n4".into(),
                addr: "127.0.0.1:7401".into()
            }
        );
    }

    #[tokio::test]
    async fn failures_name_the_exit_status_and_stderr_and_timeouts_kill() {
        let p = provisioner("echo no capacity in zone b >&2; exit 3", "exit 1", 10.0);
        let err = p.provision(&req()).await.unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.contains("no capacity"),
            "{err}"
        );
        assert!(
            p.release("n4")
                .await
                .unwrap_err()
                .contains("release command exited")
        );
        let p = provisioner("sleep 30", "true", 0.3);
        let err = p.provision(&req()).await.unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert_eq!(p.release("n4").await, Ok(()));
    }

    #[test]
    fn bad_output_is_refused_with_what_was_expected() {
        assert!(parse_spec("").unwrap_err().contains("printed nothing"));
        assert!(parse_spec("ok\n").unwrap_err().contains("not {"));
        assert!(
            parse_spec(r#"{"id":"a b","addr":"1.2.3.4:1"}"#)
                .unwrap_err()
                .contains("ids are")
        );
        assert!(
            parse_spec(r#"{"id":"n5","addr":"node5:7400"}"#)
                .unwrap_err()
                .contains("ip:port")
        );
    }
}
