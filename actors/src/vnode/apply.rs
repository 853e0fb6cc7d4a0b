//! How one client write becomes a key's new object: the stale-write refusal, the check that a
//! context names only versions this node minted, and dot minting.

use super::WriteOp;
use crate::core::version::{CausalContext, ConflictPolicy, Object};
use crate::protocol::KvError;
use crate::storage::dot_sequence::DotSequence;

/// Computes one write's new object; the error is the op's reply when it cannot apply.
pub(super) fn apply_op(
    object: &mut Object,
    op: &WriteOp,
    node: &str,
    dots: &DotSequence,
    now: u64,
    conflict: ConflictPolicy,
) -> Result<CausalContext, KvError> {
    if op.not_after_ms.is_some_and(|t| now > t) {
        // Only after a stall: the client retried elsewhere, so applying it now could undo
        // what the client did since.
        tracing::info!("refused a write the client had given up on");
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
