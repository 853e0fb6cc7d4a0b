//! How one client write becomes a key's new object: the stale-write refusal, the check that a
//! context names only versions this node minted, and dot minting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::WriteOp;
use crate::core::version::{CausalContext, ConflictPolicy, Object};
use crate::protocol::KvError;
use crate::storage::dot_sequence::DotSequence;

/// Refusals of late writes are logged at most this often: a clock minutes ahead refuses every
/// write this node coordinates.
const LATE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a refused late write, `late_ms` after its attempt ended by this node's clock, with how
/// many were refused since the last line.
fn note_late_write(late_ms: u64) {
    static STATE: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    state.1 += 1;
    if state.0.is_some_and(|t| t.elapsed() < LATE_LOG_EVERY) {
        return;
    }
    let refused = std::mem::take(&mut state.1);
    state.0 = Some(Instant::now());
    drop(state);
    tracing::warn!(
        late_ms,
        refused,
        "refused writes whose attempt had already ended by this node's clock: expected after a \
         stall; if it persists, this node's clock is ahead of its clients' (check NTP)"
    );
}

/// Computes one write's new object; the error is the op's reply when it cannot apply.
pub(super) fn apply_op(
    object: &mut Object,
    op: &WriteOp,
    node: &str,
    dots: &DotSequence,
    now: u64,
    conflict: ConflictPolicy,
) -> Result<CausalContext, KvError> {
    if let Some(t) = op.not_after_ms.filter(|&t| now > t) {
        // After a stall (the client retried elsewhere, so applying it now could undo what the
        // client did since), or a clock running ahead of the client's.
        note_late_write(now - t);
        return Err(KvError::Timeout);
    }
    // Counters come from one node-wide sequence shared by every incarnation: a context naming
    // one this node never issued, under any of its authors, is forged.
    let base = node.rsplit_once('~').map_or(node, |(b, _)| b);
    let ours = |a: &str| a == base || a.strip_prefix(base).is_some_and(|r| r.starts_with('~'));
    if let Some(ctx) = &op.context
        && ctx
            .seen
            .0
            .keys()
            .chain(ctx.dots.iter().map(|d| &d.node))
            .filter(|a| ours(a))
            .any(|a| ctx.max_counter(a) >= dots.issued_below())
    {
        return Err(KvError::BadContext(format!(
            "it names writes node {base} never made"
        )));
    }
    let floor = object
        .next_counter_floor(node, op.context.as_ref())
        .ok_or_else(|| KvError::BadContext("counter out of range".into()))?;
    let counter = dots
        .next_at_least(floor)
        .map_err(|e| KvError::Storage(format!("dot sequence: {e}")))?;
    Ok(object.update(
        node,
        counter,
        op.context.as_ref(),
        op.value.clone(),
        now,
        conflict,
    ))
}
