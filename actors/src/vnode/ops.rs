//! A vnode's queued changes and where their answers go.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

use super::WriteOp;
use crate::core::version::Object;
use crate::protocol::KvError;

/// The one answer to a whole [`VnodeMessage::Ingest`], given once every part of it is durable
/// or one failed; a part dropped unanswered (the vnode stopped) fails it.
#[derive(Debug)]
pub(super) struct IngestAck {
    pub(super) parts: usize,
    pub(super) durable: AtomicUsize,
    pub(super) error: Mutex<Option<KvError>>,
    pub(super) reply: Mutex<Option<oneshot::Sender<Result<(), KvError>>>>,
}

impl Drop for IngestAck {
    fn drop(&mut self) {
        let error = self
            .error
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let reply = self
            .reply
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let result = match error {
            Some(e) => Err(e),
            None if *self.durable.get_mut() == self.parts => Ok(()),
            None => Err(KvError::Unavailable { needed: 1, got: 0 }),
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// Where a merge's answer goes.
#[derive(Debug)]
pub(super) enum MergeReply {
    /// Its own requester.
    One(oneshot::Sender<Result<(), KvError>>),
    /// The ingest it is part of.
    Part(Arc<IngestAck>),
}

impl MergeReply {
    pub(super) fn send(self, r: Result<(), KvError>) {
        match (self, r) {
            (MergeReply::One(tx), r) => {
                let _ = tx.send(r);
            }
            (MergeReply::Part(ack), Ok(())) => {
                ack.durable.fetch_add(1, Ordering::Relaxed);
            }
            (MergeReply::Part(ack), Err(e)) => {
                let mut error = ack.error.lock().unwrap_or_else(|p| p.into_inner());
                error.get_or_insert(e);
            }
        }
    }
}

/// A queued merge.
#[derive(Debug)]
pub(super) struct Merge {
    pub(super) key: Vec<u8>,
    pub(super) object: Object,
    pub(super) reply: MergeReply,
}

/// A queued change.
#[derive(Debug)]
pub(super) enum Op {
    Write(WriteOp),
    Merge(Merge),
}

impl Op {
    pub(super) fn key(&self) -> &[u8] {
        match self {
            Op::Write(w) => &w.key,
            Op::Merge(m) => &m.key,
        }
    }

    pub(super) fn fail(self, e: KvError) {
        match self {
            Op::Write(w) => {
                let _ = w.minted.send(Err(e.clone()));
                let _ = w.durable.send(Err(e));
            }
            Op::Merge(m) => m.reply.send(Err(e)),
        }
    }
}
