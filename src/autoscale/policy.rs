//! The autoscaler's decision core: per-node signals in, a desired cluster size and one action
//! out. Pure: time is a number of milliseconds the caller passes, so tests drive it directly.
//!
//! The desired size follows the ratio of load to target (the largest over the enabled signals,
//! of the smoothed cluster mean), like Kubernetes' HPA: `ceil(members × ratio)`, unchanged
//! while the ratio is within the tolerance band around 1. Shrinking sizes to the band's bottom
//! edge instead, `ceil(members × ratio / (1 − tolerance))`, so the load after a scale-in is still
//! below the band and does not ask for the node back. A scale-out needs the desire to grow
//! held for `scale_out_after_ms`, a scale-in the desire to shrink held for `scale_in_after_ms`
//! (and sizes to the largest desire seen over that window), and neither acts within
//! `cooldown_ms` of the last action. Each action moves one node, since membership changes run
//! one at a time. Scale-in also waits for every member up and no transfer running; scale-out
//! never waits on a down node, and a disk nearly full scales out at once.

/// What the policy is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Fewest members (at least N).
    pub min_nodes: usize,
    /// Most members.
    pub max_nodes: usize,
    /// Target per signal; `None` leaves the signal out.
    pub targets: Targets,
    /// Ratios within `1 ± tolerance` keep the size.
    pub tolerance: f64,
    /// Weight of a new sample in the moving average (0..=1).
    pub smoothing: f64,
    /// How long the desire to grow must hold before scaling out, ms.
    pub scale_out_after_ms: u64,
    /// How long the desire to shrink must hold before scaling in, ms.
    pub scale_in_after_ms: u64,
    /// Quiet time after any action, ms.
    pub cooldown_ms: u64,
    /// A node's disk use (percent) at which the cluster grows at once.
    pub disk_emergency_pct: f64,
}

/// Target values per signal, per node on average.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    /// CPU use, percent.
    pub cpu_pct: Option<f64>,
    /// Memory use, percent.
    pub mem_pct: Option<f64>,
    /// Disk use, percent.
    pub disk_pct: Option<f64>,
    /// Operations per second per node.
    pub ops_per_sec: Option<f64>,
    /// Requests refused as `Overloaded` per second per node.
    pub overloaded_per_sec: Option<f64>,
}

/// One node's signals at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSignals {
    /// CPU use, percent.
    pub cpu_pct: f64,
    /// Memory use, percent.
    pub mem_pct: f64,
    /// Disk use, percent.
    pub disk_pct: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Requests refused as `Overloaded` per second.
    pub overloaded_per_sec: f64,
}

/// What the cluster looks like besides its signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterView {
    /// Members of the ring.
    pub members: usize,
    /// Every member is up.
    pub all_up: bool,
    /// An ownership transfer (or any membership change) is under way.
    pub changing: bool,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Hold,
    /// Add one node.
    ScaleOut,
    /// Drain and remove one node.
    ScaleIn,
}

/// One decision, with what it was based on.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The size the load asks for, within the limits.
    pub desired: usize,
    /// Load over target of the most loaded signal (smoothed).
    pub ratio: f64,
    /// The action.
    pub action: Action,
    /// Why, in words.
    pub reason: String,
}

/// The policy's memory between observations.
#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    smoothed: Option<NodeSignals>,
    /// Since when the desire to grow has held.
    grow_since: Option<u64>,
    /// Since when the desire to shrink has held.
    shrink_since: Option<u64>,
    /// Desires to shrink over the scale-in window: (when, desired size).
    shrink: Vec<(u64, usize)>,
    last_action: Option<u64>,
}

impl Policy {
    /// A policy with no history.
    pub fn new(config: PolicyConfig) -> Policy {
        Policy {
            config,
            smoothed: None,
            grow_since: None,
            shrink_since: None,
            shrink: Vec::new(),
            last_action: None,
        }
    }

    /// Records that an action was taken at `now`: the cooldown starts and the windows reset.
    pub fn acted(&mut self, now: u64) {
        self.last_action = Some(now);
        self.grow_since = None;
        self.shrink_since = None;
        self.shrink.clear();
    }

    /// Takes the signals of every node reporting at `now` and decides.
    pub fn observe(&mut self, now: u64, nodes: &[NodeSignals], view: ClusterView) -> Decision {
        let c = &self.config;
        let members = view.members;
        let clamp = |n: usize| n.clamp(c.min_nodes, c.max_nodes.max(c.min_nodes));
        let hold = |desired, ratio, reason: String| Decision {
            desired,
            ratio,
            action: Action::Hold,
            reason,
        };
        if nodes.is_empty() {
            return hold(clamp(members), 0.0, "no signals".into());
        }
        let mean = mean(nodes);
        let s = match &self.smoothed {
            None => mean,
            Some(old) => blend(old, &mean, c.smoothing.clamp(0.0, 1.0)),
        };
        self.smoothed = Some(s.clone());
        let ratio = ratio(&s, &c.targets);
        let tol = c.tolerance.clamp(0.0, 0.99);
        let raw = if (ratio - 1.0).abs() <= tol {
            members
        } else if ratio > 1.0 {
            (members as f64 * ratio).ceil() as usize
        } else {
            // Shrink only to a size whose load stays below the band: sized to the band's
            // bottom edge, one node fewer would otherwise land right back above it.
            (members as f64 * ratio / (1.0 - tol)).ceil() as usize
        };
        let desired = clamp(raw.max(1));
        let cooling = self
            .last_action
            .is_some_and(|t| now.saturating_sub(t) < c.cooldown_ms);
        let disk_max = nodes.iter().map(|n| n.disk_pct).fold(0.0, f64::max);
        if disk_max >= c.disk_emergency_pct && members < c.max_nodes {
            return Decision {
                desired: clamp(members + 1).max(desired),
                ratio,
                action: Action::ScaleOut,
                reason: format!("a node's disk is {disk_max:.0}% full"),
            };
        }
        if members < c.min_nodes {
            return Decision {
                desired,
                ratio,
                action: Action::ScaleOut,
                reason: format!("below min_nodes ({})", c.min_nodes),
            };
        }
        if desired > members {
            self.shrink_since = None;
            self.shrink.clear();
            let since = *self.grow_since.get_or_insert(now);
            if cooling {
                return hold(desired, ratio, "cooling down".into());
            }
            if now.saturating_sub(since) < c.scale_out_after_ms {
                return hold(desired, ratio, "load high, waiting out the window".into());
            }
            return Decision {
                desired,
                ratio,
                action: Action::ScaleOut,
                reason: format!("load {ratio:.2}x target"),
            };
        }
        self.grow_since = None;
        if desired >= members {
            self.shrink_since = None;
            self.shrink.clear();
            return hold(desired, ratio, "load within target".into());
        }
        let since = *self.shrink_since.get_or_insert(now);
        self.shrink.push((now, desired));
        let window_start = now.saturating_sub(c.scale_in_after_ms);
        self.shrink.retain(|&(t, _)| t >= window_start);
        // The largest desire in the window: one quiet moment does not remove a node.
        let size = self.shrink.iter().map(|&(_, d)| d).max().unwrap_or(members);
        let held = now.saturating_sub(since) >= c.scale_in_after_ms;
        if cooling {
            return hold(size, ratio, "cooling down".into());
        }
        if !held || size >= members {
            return hold(size, ratio, "load low, waiting out the window".into());
        }
        if !view.all_up || view.changing {
            let why = if view.changing {
                "a membership change is running"
            } else {
                "a member is down"
            };
            return hold(size, ratio, format!("load low, but {why}"));
        }
        Decision {
            desired: size,
            ratio,
            action: Action::ScaleIn,
            reason: format!("load {ratio:.2}x target"),
        }
    }
}

fn mean(nodes: &[NodeSignals]) -> NodeSignals {
    let n = nodes.len() as f64;
    let avg = |f: fn(&NodeSignals) -> f64| nodes.iter().map(f).sum::<f64>() / n;
    NodeSignals {
        cpu_pct: avg(|s| s.cpu_pct),
        mem_pct: avg(|s| s.mem_pct),
        disk_pct: avg(|s| s.disk_pct),
        ops_per_sec: avg(|s| s.ops_per_sec),
        overloaded_per_sec: avg(|s| s.overloaded_per_sec),
    }
}

fn blend(old: &NodeSignals, new: &NodeSignals, a: f64) -> NodeSignals {
    let mix = |o: f64, n: f64| o + a * (n - o);
    NodeSignals {
        cpu_pct: mix(old.cpu_pct, new.cpu_pct),
        mem_pct: mix(old.mem_pct, new.mem_pct),
        disk_pct: mix(old.disk_pct, new.disk_pct),
        ops_per_sec: mix(old.ops_per_sec, new.ops_per_sec),
        overloaded_per_sec: mix(old.overloaded_per_sec, new.overloaded_per_sec),
    }
}

/// The largest load-over-target ratio of the enabled signals (0 with none). Refusals count
/// against a target of their own; with a target of 0, any refusal doubles the ratio.
fn ratio(s: &NodeSignals, t: &Targets) -> f64 {
    let pairs = [
        (s.cpu_pct, t.cpu_pct),
        (s.mem_pct, t.mem_pct),
        (s.disk_pct, t.disk_pct),
        (s.ops_per_sec, t.ops_per_sec),
    ];
    let mut r = pairs
        .iter()
        .filter_map(|&(v, t)| t.filter(|t| *t > 0.0).map(|t| v / t))
        .fold(0.0, f64::max);
    if let Some(t) = t.overloaded_per_sec {
        let o = s.overloaded_per_sec;
        r = r.max(if t > 0.0 {
            o / t
        } else if o > 0.0 {
            2.0
        } else {
            0.0
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> PolicyConfig {
        PolicyConfig {
            min_nodes: 3,
            max_nodes: 5,
            targets: Targets {
                cpu_pct: Some(60.0),
                ..Targets::default()
            },
            tolerance: 0.1,
            smoothing: 0.3,
            scale_out_after_ms: 30_000,
            scale_in_after_ms: 120_000,
            cooldown_ms: 60_000,
            disk_emergency_pct: 90.0,
        }
    }

    fn cpu(pct: f64, n: usize) -> Vec<NodeSignals> {
        vec![
            NodeSignals {
                cpu_pct: pct,
                ..NodeSignals::default()
            };
            n
        ]
    }

    const CALM: ClusterView = ClusterView {
        members: 3,
        all_up: true,
        changing: false,
    };

    #[test]
    fn a_sustained_load_step_scales_out_only_after_the_window() {
        let mut p = Policy::new(config());
        let mut acted_at = None;
        for s in 0..60u64 {
            let d = p.observe(s * 1000, &cpu(95.0, 3), CALM);
            assert!(d.desired <= 5);
            if d.action == Action::ScaleOut {
                acted_at = Some(s);
                break;
            }
        }
        let at = acted_at.expect("scaled out");
        assert!((30..=35).contains(&at), "scaled out at {at} s");
    }

    #[test]
    fn scale_in_waits_for_its_window_every_member_up_and_no_change() {
        let mut p = Policy::new(config());
        let view = ClusterView { members: 5, ..CALM };
        let mut first = None;
        for s in 0..200u64 {
            let d = p.observe(s * 1000, &cpu(10.0, 5), view);
            if d.action == Action::ScaleIn {
                first = Some(s);
                break;
            }
        }
        assert_eq!(first, Some(120));
        let mut p = Policy::new(config());
        let down = ClusterView {
            all_up: false,
            ..view
        };
        let changing = ClusterView {
            changing: true,
            ..view
        };
        for s in 0..300u64 {
            assert_ne!(
                p.observe(s * 1000, &cpu(10.0, 5), down).action,
                Action::ScaleIn
            );
            assert_ne!(
                p.observe(s * 1000, &cpu(10.0, 5), changing).action,
                Action::ScaleIn
            );
        }
    }

    #[test]
    fn scale_in_stops_where_one_node_fewer_would_ask_for_it_back() {
        // 5 nodes at 0.8x the target: 4 would carry 1.0x, inside the band's top, so 5 stay;
        // at 0.6x, 4 carry 0.75x and one goes.
        let view = ClusterView { members: 5, ..CALM };
        let mut p = Policy::new(config());
        for s in 0..400u64 {
            let d = p.observe(s * 1000, &cpu(48.0, 5), view);
            assert_eq!(d.desired, 5, "at {s} s: {d:?}");
            assert_eq!(d.action, Action::Hold);
        }
        let mut p = Policy::new(config());
        let d = (0..400u64)
            .map(|s| p.observe(s * 1000, &cpu(36.0, 5), view))
            .find(|d| d.action == Action::ScaleIn)
            .expect("scales in");
        assert_eq!(d.desired, 4);
    }

    #[test]
    fn a_full_disk_scales_out_at_once_even_with_a_member_down() {
        let mut p = Policy::new(config());
        let mut nodes = cpu(10.0, 3);
        nodes[1].disk_pct = 93.0;
        let view = ClusterView {
            all_up: false,
            ..CALM
        };
        assert_eq!(p.observe(0, &nodes, view).action, Action::ScaleOut);
    }

    proptest! {
        #[test]
        fn desired_stays_within_limits_and_cooldowns_hold(
            loads in proptest::collection::vec((0.0f64..400.0, 0.0f64..100.0), 1..300),
        ) {
            let c = config();
            let mut p = Policy::new(c.clone());
            let mut members = 3usize;
            let mut last: Option<u64> = None;
            for (i, (load, disk)) in loads.into_iter().enumerate() {
                let now = i as u64 * 5_000;
                let mut nodes = cpu(load, members);
                nodes[0].disk_pct = disk;
                let d = p.observe(now, &nodes, ClusterView { members, ..CALM });
                prop_assert!(d.desired >= c.min_nodes && d.desired <= c.max_nodes);
                match d.action {
                    Action::Hold => {}
                    Action::ScaleOut => {
                        prop_assert!(members < c.max_nodes);
                        if disk < c.disk_emergency_pct {
                            prop_assert!(last.is_none_or(|t| now - t >= c.cooldown_ms));
                        }
                        members += 1;
                        p.acted(now);
                        last = Some(now);
                    }
                    Action::ScaleIn => {
                        prop_assert!(members > c.min_nodes);
                        prop_assert!(last.is_none_or(|t| now - t >= c.cooldown_ms));
                        members -= 1;
                        p.acted(now);
                        last = Some(now);
                    }
                }
            }
        }

        #[test]
        fn a_noisy_constant_load_never_acts(
            noise in proptest::collection::vec(-8.0f64..8.0, 720),
            level in 56.0f64..64.0,
        ) {
            // Ten minutes of 1 s samples around a load 3 nodes carry within the tolerance band,
            // each sample off by up to 8 points (±13% of the 60% target).
            let mut p = Policy::new(config());
            for (i, n) in noise.into_iter().enumerate() {
                let d = p.observe(i as u64 * 1000, &cpu(level + n, 3), CALM);
                prop_assert_eq!(d.action, Action::Hold, "acted at {} s: {:?}", i, d);
            }
        }
    }
}
