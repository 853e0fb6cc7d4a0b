//! A vnode's memtable flushes: when they run and how the memtable forgets what they wrote.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use super::VnodeState;
use crate::storage::stored::Stored;
use crate::storage::vnode_store::VnodeStore;
use crate::vnode::VnodeMessage;

/// Keys a memtable holds before it is flushed at once.
pub(super) const MEMTABLE_MAX_KEYS: usize = 1024;
/// Bytes written to a memtable before it is flushed at once: bounds a node's memtables to
/// this times its vnode count, whatever the value sizes.
pub(super) const MEMTABLE_MAX_BYTES: usize = 1 << 20;
/// How often a memtable flush due during a checkpoint looks again whether it may run.
pub(super) const CHECKPOINT_POLL: Duration = Duration::from_millis(5);

/// Longest a write waits in the memtable before the file gets it: long enough that one redb
/// transaction carries many keys (its fixed cost dominated flushes every 50 ms).
const MEMTABLE_FLUSH_AFTER: Duration = Duration::from_millis(1000);

/// Asks this vnode to flush its memtable in [`MEMTABLE_FLUSH_AFTER`].
pub(super) fn myself_flush_after(state: &VnodeState) {
    if let Some(me) = state.args.table.vnode(state.args.partition) {
        me.send_after(MEMTABLE_FLUSH_AFTER, || VnodeMessage::FlushMemtable);
    }
}

/// What a memtable flush wrote, and whether it could.
pub(super) type FlushOutcome = (Vec<(Vec<u8>, Arc<Stored>)>, Result<(), String>);

/// Starts writing the memtable to the file (one in-memory transaction) on a blocking thread
/// while the vnode goes on taking writes: a flush of a second's writes takes milliseconds,
/// tens on a busy machine, and every write to this vnode would wait that long. The vnode hears
/// of the end through [`VnodeMessage::Flushed`]; the memtable keeps every entry until then, so
/// readers find them there or, after the commit, in the file.
pub(super) fn start_flush(state: &mut VnodeState, myself: &ActorRef<VnodeMessage>) {
    state.flush_asked = false;
    if state.memtable.is_empty() {
        return;
    }
    let pairs = state.memtable.snapshot();
    let db = state.store.reader();
    let (tx, rx) = oneshot::channel();
    let me = myself.clone();
    tokio::task::spawn_blocking(move || {
        let refs = pairs
            .iter()
            .map(|(k, s)| (k.as_slice(), s.encoded.as_slice()));
        let result = VnodeStore::put_encoded_in(&db, refs, false).map_err(|e| e.to_string());
        let _ = tx.send((pairs, result));
        let _ = me.cast(VnodeMessage::Flushed);
    });
    state.flushing = Some(rx);
}

/// Waits for the flush in flight, if any, and forgets from the memtable what it wrote.
pub(super) async fn finish_flush(state: &mut VnodeState) -> Result<(), ActorProcessingErr> {
    let Some(rx) = state.flushing.take() else {
        return Ok(());
    };
    let (pairs, result) = rx
        .await
        .map_err(|_| format!("vnode {} flush task lost", state.args.partition))?;
    if let Err(e) = result {
        return Err(format!("vnode {} flush failed: {e}", state.args.partition).into());
    }
    state.memtable_bytes = state.memtable.remove_flushed(&pairs);
    if !state.memtable.is_empty() && !state.flush_scheduled {
        state.flush_scheduled = true;
        myself_flush_after(state);
    }
    Ok(())
}

/// Commits the memtable to the file in one in-memory transaction and empties it, with the
/// mailbox waiting (a checkpoint needs every entry in the file).
pub(super) async fn flush_memtable(state: &mut VnodeState) -> Result<(), ActorProcessingErr> {
    state.flush_asked = false;
    if state.memtable.is_empty() {
        return Ok(());
    }
    let pairs = state.memtable.snapshot();
    let db = state.store.reader();
    // On a blocking thread: a second's writes take a millisecond or more to insert, which on
    // the runtime's worker would stall every actor of the node, not just this vnode.
    let flushed = tokio::task::spawn_blocking(move || {
        let pairs = pairs
            .iter()
            .map(|(k, s)| (k.as_slice(), s.encoded.as_slice()));
        VnodeStore::put_encoded_in(&db, pairs, false).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = flushed {
        return Err(format!("vnode {} flush failed: {e}", state.args.partition).into());
    }
    // The vnode is the only writer and waited for the flush, so nothing changed since
    // `snapshot()`.
    state.memtable.clear();
    state.memtable_bytes = 0;
    Ok(())
}
