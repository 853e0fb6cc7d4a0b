//! The autoscaler as it runs in every node: an actor answering `ringkv console -c autoscale`
//! (pg group `ringkv.autoscale.<node>`) and a loop that, on the claimant only, reads every
//! member's signals, asks the policy and acts. When the claimant changes (it died, or a lower
//! id joined), the new claimant's loop takes over with a fresh history, which errs on the side
//! of waiting: its windows start again.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ringkv_actors::protocol::{
    AutoscaleMessage, AutoscaleView, DecisionView, MembershipRequest, Wire, autoscale_group,
};

use super::actuator::{membership, read_signals, scale_in, scale_out};
use super::config::AutoscaleSection;
use super::policy::{Action, ClusterView, Decision, NodeSignals, Policy};
use super::provision::{Provisioner, command::Command, kubernetes::Kubernetes, local::Local};

/// Decisions kept for the console.
const DECISIONS_KEPT: usize = 50;

/// What a node's autoscaler is started with.
#[derive(Debug, Clone)]
pub struct AutoscaleSetup {
    /// This node's id.
    pub node_id: String,
    /// This node's listen address (new nodes join through it).
    pub addr: SocketAddr,
    /// `[autoscale]`.
    pub section: AutoscaleSection,
    /// The configuration file this node was started with.
    pub config_path: PathBuf,
    /// `cluster.data_dir`.
    pub data_dir: PathBuf,
}

/// Builds the configured provisioner; the error says what to fix.
pub fn provisioner(setup: &AutoscaleSetup) -> Result<Provisioner, String> {
    let s = &setup.section;
    Ok(match s.provisioner.as_str() {
        "local" => {
            let dir = if s.local.dir.as_os_str().is_empty() {
                setup.data_dir.clone()
            } else {
                s.local.dir.clone()
            };
            Provisioner::Local(Local::new(dir))
        }
        "command" => {
            Provisioner::Command(Command::new(s.command.clone(), setup.config_path.clone()))
        }
        "kubernetes" => Provisioner::Kubernetes(
            Kubernetes::new(s.kubernetes.clone())
                .map_err(|e| format!("autoscale.kubernetes: {e}"))?,
        ),
        other => return Err(format!("autoscale.provisioner = \"{other}\" is unknown")),
    })
}

/// Starts the autoscaler's actor, and its loop when `[autoscale] enabled`.
pub async fn start(setup: AutoscaleSetup) -> Result<ActorRef<AutoscaleMessage>, String> {
    let prov = if setup.section.enabled {
        Some(provisioner(&setup)?)
    } else {
        None
    };
    let shared = Arc::new(Mutex::new(AutoscaleView {
        node: setup.node_id.clone(),
        enabled: setup.section.enabled,
        provisioner: setup.section.provisioner.clone(),
        min_nodes: setup.section.min_nodes,
        max_nodes: setup.section.max_nodes,
        state: if setup.section.enabled {
            "starting".into()
        } else {
            "disabled: set [autoscale] enabled = true".into()
        },
        ..AutoscaleView::default()
    }));
    let (actor, _) = Actor::spawn(None, Autoscaler, shared.clone())
        .await
        .map_err(|e| format!("autoscaler failed to start: {e}"))?;
    ractor::pg::join(autoscale_group(&setup.node_id), vec![actor.get_cell()]);
    if let Some(prov) = prov {
        tracing::info!(
            provisioner = prov.name(),
            min = setup.section.min_nodes,
            max = setup.section.max_nodes,
            "autoscaler on; it decides while this node is the claimant"
        );
        tokio::spawn(run(setup, prov, shared));
    }
    Ok(actor)
}

/// Answers status requests from the shared report.
#[derive(Debug)]
struct Autoscaler;

impl Actor for Autoscaler {
    type Msg = AutoscaleMessage;
    type State = Arc<Mutex<AutoscaleView>>;
    type Arguments = Arc<Mutex<AutoscaleView>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<AutoscaleMessage>,
        shared: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle(
        &self,
        _myself: ActorRef<AutoscaleMessage>,
        message: AutoscaleMessage,
        shared: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AutoscaleMessage::Status(_, reply) => {
                let view = lock(shared).clone();
                let _ = reply.send(Wire::new(view));
            }
        }
        Ok(())
    }
}

fn lock(m: &Mutex<AutoscaleView>) -> std::sync::MutexGuard<'_, AutoscaleView> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Hold => "hold",
        Action::ScaleOut => "scale-out",
        Action::ScaleIn => "scale-in",
    }
}

/// Appends a decision to the report; holds only when their reason changed, so a long quiet
/// stretch is one line. Answers its index for the result.
fn record(view: &mut AutoscaleView, members: usize, d: &Decision, action: Action) -> Option<usize> {
    let name = action_name(action);
    if action == Action::Hold
        && view
            .decisions
            .last()
            .is_some_and(|x| x.action == "hold" && x.reason == d.reason && x.members == members)
    {
        return None;
    }
    let signals: Vec<String> = view
        .signals
        .iter()
        .map(|s| {
            if s.answered {
                format!(
                    "{} cpu {:.0}% mem {:.1}% disk {:.0}% ops {:.0}/s refused {:.1}/s",
                    s.node, s.cpu_pct, s.mem_pct, s.disk_pct, s.ops_per_sec, s.overloaded_per_sec
                )
            } else {
                format!("{} no answer", s.node)
            }
        })
        .collect();
    tracing::info!(
        members,
        signals = signals.join("; "),
        desired = d.desired,
        ratio = format!("{:.2}", d.ratio),
        action = name,
        reason = %d.reason,
        "autoscale decision"
    );
    let mut q: VecDeque<DecisionView> = std::mem::take(&mut view.decisions).into();
    if q.len() >= DECISIONS_KEPT {
        q.pop_front();
    }
    q.push_back(DecisionView {
        at_ms: unix_ms(),
        members,
        desired: d.desired,
        ratio: d.ratio,
        action: name.into(),
        reason: d.reason.clone(),
        result: String::new(),
    });
    view.decisions = q.into();
    Some(view.decisions.len() - 1)
}

async fn run(setup: AutoscaleSetup, prov: Provisioner, shared: Arc<Mutex<AutoscaleView>>) {
    let me = setup.node_id.clone();
    let cfg = setup.section.clone();
    let t0 = Instant::now();
    let now_ms = || t0.elapsed().as_millis() as u64;
    let cooldown = Duration::from_secs_f64(cfg.cooldown_secs);
    let start_timeout = Duration::from_secs_f64(cfg.start_timeout_secs);
    let mut policy: Option<Policy> = None;
    let mut acted_at: Option<Instant> = None;
    let every = Duration::from_secs_f64(cfg.interval_secs);
    // The first reading waits a period: at start a node may not see the lower ids up yet and
    // would take itself for the claimant.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let ring = match membership(&me, MembershipRequest::Show).await {
            Ok(v) => v,
            Err(e) => {
                lock(&shared).state = format!("cannot reach the claimant: {e}");
                continue;
            }
        };
        if ring.claimant != me {
            policy = None;
            acted_at = None;
            let mut v = lock(&shared);
            v.active = false;
            v.members = ring.members.len();
            v.state = format!("standing by: {} decides", ring.claimant);
            continue;
        }
        let signals = read_signals(&ring.members).await;
        let answered: Vec<NodeSignals> = signals
            .iter()
            .filter(|s| s.answered)
            .map(|s| NodeSignals {
                cpu_pct: s.cpu_pct,
                mem_pct: s.mem_pct,
                disk_pct: s.disk_pct,
                ops_per_sec: s.ops_per_sec,
                overloaded_per_sec: s.overloaded_per_sec,
            })
            .collect();
        let members = ring.members.len();
        let view = ClusterView {
            members,
            all_up: answered.len() == members,
            changing: ring.stage != "stable" || !ring.staged.is_empty(),
        };
        let p = policy.get_or_insert_with(|| Policy::new(cfg.policy()));
        let mut d = p.observe(now_ms(), &answered, view);
        // Staging would fold an operator's pending change into ours, and a second change
        // cannot start while one runs.
        if d.action != Action::Hold && !ring.staged.is_empty() {
            d.reason = format!(
                "{} wanted, but an operator's staged change waits (commit or clear it)",
                action_name(d.action)
            );
            d.action = Action::Hold;
        } else if d.action != Action::Hold && ring.stage != "stable" {
            d.reason = format!(
                "{} wanted, but a membership change is running",
                action_name(d.action)
            );
            d.action = Action::Hold;
        }
        let index = {
            let mut v = lock(&shared);
            v.active = true;
            v.members = members;
            v.signals = signals;
            v.ratio = d.ratio;
            v.desired = d.desired;
            v.cooldown_left_secs =
                acted_at.map_or(0.0, |t| cooldown.saturating_sub(t.elapsed()).as_secs_f64());
            v.state = "watching".into();
            record(&mut v, members, &d, d.action)
        };
        if d.action == Action::Hold {
            continue;
        }
        let progress = |s: String| {
            tracing::info!("autoscale: {s}");
            lock(&shared).state = s;
        };
        let addr = setup.addr.to_string();
        let result = match d.action {
            Action::ScaleOut => {
                scale_out(&me, &addr, &ring.members, &prov, start_timeout, &progress).await
            }
            _ => scale_in(&me, &ring.members, &prov, &progress).await,
        };
        match &result {
            Ok(s) => tracing::info!(action = action_name(d.action), "autoscale: {s}"),
            Err(e) => tracing::error!(
                action = action_name(d.action),
                "autoscale action failed: {e}"
            ),
        }
        // The cooldown runs from the end of the action, failed or not: a failing provisioner
        // is retried at the cooldown's pace, not every interval.
        p.acted(now_ms());
        acted_at = Some(Instant::now());
        let mut v = lock(&shared);
        v.state = "watching".into();
        if let Some(dv) = index.and_then(|i| v.decisions.get_mut(i)) {
            dv.result = match result {
                Ok(s) => s,
                Err(e) => format!("failed: {e}"),
            };
        }
    }
}
