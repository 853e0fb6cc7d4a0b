//! `[autoscale]` in `cluster.toml`: whether the cluster sizes itself, its limits and targets,
//! the windows that keep noise from making it flap, and the provisioner that starts and stops
//! nodes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::policy::{PolicyConfig, Targets};
use super::provision::kubernetes::KubernetesConfig;

/// `[autoscale]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleSection {
    /// Turns the autoscaler on.
    pub enabled: bool,
    /// `local`, `command` or `kubernetes`.
    pub provisioner: String,
    /// Fewest members; at least the replication factor.
    pub min_nodes: usize,
    /// Most members.
    pub max_nodes: usize,
    /// Target CPU use per node, percent of its cores (0 leaves the signal out).
    pub cpu_pct: f64,
    /// Target resident memory per node, percent of its limit (0: out).
    pub mem_pct: f64,
    /// Target disk use per node, percent (0: out).
    pub disk_pct: f64,
    /// Target client requests per second per node (0: out).
    pub ops_per_sec: f64,
    /// Requests refused as `Overloaded` per second per node that count as full load (0: out).
    pub overloaded_per_sec: f64,
    /// Ratios of load to target within `1 ± tolerance` keep the size.
    pub tolerance: f64,
    /// Seconds between readings of every node's signals.
    pub interval_secs: f64,
    /// Weight of a new reading in the moving average (0..=1).
    pub smoothing: f64,
    /// How long the load must ask for more nodes before one is added, seconds.
    pub scale_out_after_secs: f64,
    /// How long the load must ask for fewer nodes before one is removed, seconds.
    pub scale_in_after_secs: f64,
    /// Quiet time after an action finished, seconds.
    pub cooldown_secs: f64,
    /// A node's disk use (percent) that adds a node at once.
    pub disk_emergency_pct: f64,
    /// Longest a new node may take to start and answer before it is released, seconds.
    pub start_timeout_secs: f64,
    /// `provisioner = "local"`.
    pub local: LocalConfig,
    /// `provisioner = "command"`.
    pub command: CommandConfig,
    /// `provisioner = "kubernetes"`.
    pub kubernetes: KubernetesConfig,
}

impl Default for AutoscaleSection {
    fn default() -> Self {
        AutoscaleSection {
            enabled: false,
            provisioner: "local".into(),
            min_nodes: 3,
            max_nodes: 5,
            cpu_pct: 65.0,
            mem_pct: 0.0,
            disk_pct: 80.0,
            ops_per_sec: 0.0,
            overloaded_per_sec: 0.0,
            tolerance: 0.1,
            interval_secs: 5.0,
            smoothing: 0.5,
            scale_out_after_secs: 30.0,
            scale_in_after_secs: 600.0,
            cooldown_secs: 120.0,
            disk_emergency_pct: 90.0,
            start_timeout_secs: 120.0,
            local: LocalConfig::default(),
            command: CommandConfig::default(),
            kubernetes: KubernetesConfig::default(),
        }
    }
}

/// `[autoscale.local]`: nodes as processes on this machine, next to the launched ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// The launcher's data folder (holding `launcher.json`); empty: `cluster.data_dir`.
    pub dir: PathBuf,
}

/// `[autoscale.command]`: a user command per action.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    /// Run through `sh -c` to start a node; prints `{"id": …, "addr": …}` as its last line.
    pub provision: String,
    /// Run through `sh -c` to stop the node `$RINGKV_NODE_ID` after it left.
    pub release: String,
    /// Longest either command may run, seconds.
    pub timeout_secs: f64,
}

impl Default for CommandConfig {
    fn default() -> Self {
        CommandConfig {
            provision: String::new(),
            release: String::new(),
            timeout_secs: 120.0,
        }
    }
}

fn target(v: f64) -> Option<f64> {
    (v > 0.0).then_some(v)
}

impl AutoscaleSection {
    /// Checks the section against the replication factor; the message says what to fix.
    pub fn validate(&self, replicas: usize) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !["local", "command", "kubernetes"].contains(&self.provisioner.as_str()) {
            return Err(format!(
                "autoscale.provisioner = \"{}\" is unknown: use local, command or kubernetes",
                self.provisioner
            ));
        }
        if self.min_nodes < replicas.max(1) {
            return Err(format!(
                "autoscale.min_nodes = {} is below the {replicas} replicas of every key: raise it to at least {replicas}",
                self.min_nodes
            ));
        }
        if self.max_nodes < self.min_nodes {
            return Err(format!(
                "autoscale.max_nodes = {} is below min_nodes = {}",
                self.max_nodes, self.min_nodes
            ));
        }
        let pcts = [
            ("cpu_pct", self.cpu_pct),
            ("mem_pct", self.mem_pct),
            ("disk_pct", self.disk_pct),
        ];
        for (name, v) in pcts {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!(
                    "autoscale.{name} = {v} must be a percentage (0 leaves it out)"
                ));
            }
        }
        if self.ops_per_sec < 0.0 || self.overloaded_per_sec < 0.0 {
            return Err("autoscale.ops_per_sec and overloaded_per_sec must not be negative".into());
        }
        let t = self.targets();
        if t.cpu_pct.is_none()
            && t.mem_pct.is_none()
            && t.disk_pct.is_none()
            && t.ops_per_sec.is_none()
            && t.overloaded_per_sec.is_none()
        {
            return Err("autoscale has no target: set at least one of cpu_pct, mem_pct, disk_pct, ops_per_sec, overloaded_per_sec".into());
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return Err(format!(
                "autoscale.tolerance = {} must be in [0, 1)",
                self.tolerance
            ));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(format!(
                "autoscale.smoothing = {} must be in (0, 1]",
                self.smoothing
            ));
        }
        let secs = [
            ("interval_secs", self.interval_secs),
            ("start_timeout_secs", self.start_timeout_secs),
        ];
        for (name, v) in secs {
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("autoscale.{name} = {v} must be above 0"));
            }
        }
        for (name, v) in [
            ("scale_out_after_secs", self.scale_out_after_secs),
            ("scale_in_after_secs", self.scale_in_after_secs),
            ("cooldown_secs", self.cooldown_secs),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("autoscale.{name} = {v} must not be negative"));
            }
        }
        if self.provisioner == "command" && self.command.provision.trim().is_empty() {
            return Err("autoscale.provisioner = \"command\" needs autoscale.command.provision (and release)".into());
        }
        if self.provisioner == "command" && self.command.release.trim().is_empty() {
            return Err(
                "autoscale.provisioner = \"command\" needs autoscale.command.release".into(),
            );
        }
        Ok(())
    }

    /// The targets of the enabled signals.
    pub fn targets(&self) -> Targets {
        Targets {
            cpu_pct: target(self.cpu_pct),
            mem_pct: target(self.mem_pct),
            disk_pct: target(self.disk_pct),
            ops_per_sec: target(self.ops_per_sec),
            overloaded_per_sec: target(self.overloaded_per_sec),
        }
    }

    /// The decision core's configuration.
    pub fn policy(&self) -> PolicyConfig {
        let ms = |s: f64| (s * 1000.0) as u64;
        PolicyConfig {
            min_nodes: self.min_nodes,
            max_nodes: self.max_nodes,
            targets: self.targets(),
            tolerance: self.tolerance,
            smoothing: self.smoothing,
            scale_out_after_ms: ms(self.scale_out_after_secs),
            scale_in_after_ms: ms(self.scale_in_after_secs),
            cooldown_ms: ms(self.cooldown_secs),
            disk_emergency_pct: self.disk_emergency_pct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> AutoscaleSection {
        AutoscaleSection {
            enabled: true,
            ..AutoscaleSection::default()
        }
    }

    #[test]
    fn the_defaults_validate_and_bad_values_say_what_to_fix() {
        assert_eq!(on().validate(3), Ok(()));
        let err = |s: AutoscaleSection| s.validate(3).unwrap_err();
        assert!(
            err(AutoscaleSection {
                min_nodes: 2,
                ..on()
            })
            .contains("at least 3")
        );
        assert!(
            err(AutoscaleSection {
                max_nodes: 2,
                min_nodes: 3,
                ..on()
            })
            .contains("below min_nodes")
        );
        assert!(
            err(AutoscaleSection {
                provisioner: "ec2".into(),
                ..on()
            })
            .contains("unknown")
        );
        assert!(
            err(AutoscaleSection {
                cpu_pct: 0.0,
                disk_pct: 0.0,
                ..on()
            })
            .contains("no target")
        );
        assert!(
            err(AutoscaleSection {
                provisioner: "command".into(),
                ..on()
            })
            .contains("command.provision")
        );
        assert!(
            err(AutoscaleSection {
                cpu_pct: 150.0,
                ..on()
            })
            .contains("percentage")
        );
        assert!(
            err(AutoscaleSection {
                smoothing: 0.0,
                ..on()
            })
            .contains("smoothing")
        );
        // Off: nothing is checked, so a disabled section never stops a node from starting.
        assert_eq!(
            AutoscaleSection {
                min_nodes: 0,
                ..AutoscaleSection::default()
            }
            .validate(3),
            Ok(())
        );
    }

    #[test]
    fn zero_targets_leave_signals_out_of_the_policy() {
        let p = AutoscaleSection {
            ops_per_sec: 2000.0,
            disk_pct: 0.0,
            ..on()
        }
        .policy();
        assert_eq!(p.targets.cpu_pct, Some(65.0));
        assert_eq!(p.targets.ops_per_sec, Some(2000.0));
        assert_eq!(p.targets.disk_pct, None);
        assert_eq!(p.cooldown_ms, 120_000);
    }
}
