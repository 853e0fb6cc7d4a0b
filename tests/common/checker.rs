//! A pure checker of a read-then-write history against the final state of a healed cluster.
//!
//! Each write attempt records the values its preceding read saw (its *read-set*). A write
//! carrying that read's context supersedes exactly those versions and, because a context is a
//! causal clock, everything they superseded: the *causal past* of an attempt is its read-set
//! plus, recursively, the read-sets of the puts that wrote those values (a value was read, so
//! its write was applied somewhere and its context joined the clock that read returned).
//!
//! * **Effective attempts** (applied, so what they superseded is legitimately gone): every
//!   acknowledged attempt, every delete, every put whose value is in the final state, and every
//!   put whose value lies in the causal past of an effective attempt. An unknown-outcome delete
//!   may have been applied at any time and a tombstone is invisible to reads, so no observation
//!   can refute it. An unknown put that is neither present nor in an effective causal past is
//!   taken as not applied: had it been, its own value would have to be present or superseded,
//!   so it cannot explain another value's absence.
//! * **Lost**: an acknowledged put whose value is neither in the final state nor in the causal
//!   past of an effective attempt. A write superseded only by an acknowledged write that is
//!   itself lost is not listed again: the lost superseder is the violation.
//! * **Resurrected**: a value in the final state that lies in the causal past of a write known
//!   to be applied (acknowledged, or an unknown put whose value is in the final state). That
//!   write's context covered the value, so the value is deleted (or overwritten) and must not
//!   be readable again. In particular a key whose every put lies in the causal past of an
//!   acknowledged delete must read back as not found.
//! * **Phantom**: a value in the final state, or in any attempt's read-set, that no put
//!   attempt on that key wrote.
//!
//! Blind spots, inherent in what a client can observe: a lost value whose only superseder is an
//! unknown-outcome delete is accepted. A put the SDK retried through another node after losing
//! the connection may be applied twice, as two versions with the same bytes; a reader that saw
//! only one of them supersedes only that one, so the other can later surface as resurrected.
//! The checker assumes every write carries its read's context (blind writes are a negative
//! control) and that nobody else writes the history's keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// What became of a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The store acknowledged it: it was applied.
    Acked,
    /// Any error (timeout, lost connection, refusal): it may or may not have been applied.
    Unknown,
}

/// One write attempt: a put (value `Some`) or a delete (`None`) after a read of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Unique name of the attempt (a put's value is its name in the workload).
    pub id: String,
    /// The key written.
    pub key: String,
    /// The value put, unique across the history; `None` for a delete.
    pub value: Option<String>,
    /// The values the preceding read returned (empty: not found).
    pub read: BTreeSet<String>,
    /// Whether the store acknowledged the write.
    pub outcome: Outcome,
    /// The error text of a write that was not acknowledged.
    pub error: Option<String>,
}

impl Attempt {
    /// A put of `value` (also its id) after a read that saw `read`.
    pub fn put(key: &str, value: &str, read: &[&str], outcome: Outcome) -> Attempt {
        Attempt {
            id: value.to_string(),
            key: key.to_string(),
            value: Some(value.to_string()),
            read: read.iter().map(|v| v.to_string()).collect(),
            outcome,
            error: None,
        }
    }

    /// A delete named `id` after a read that saw `read`.
    pub fn delete(key: &str, id: &str, read: &[&str], outcome: Outcome) -> Attempt {
        Attempt {
            value: None,
            ..Attempt::put(key, id, read, outcome)
        }
    }
}

/// Every write attempt of a workload run.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The attempts, in no particular order.
    pub attempts: Vec<Attempt>,
}

/// For each key, the values a read with r=all returned after the cluster healed (empty: not found).
pub type FinalState = BTreeMap<String, BTreeSet<String>>;

/// An acknowledged put whose value vanished without anything effective superseding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The key.
    pub key: String,
    /// The lost value.
    pub value: String,
    /// The read-set of the lost write.
    pub read: BTreeSet<String>,
}

/// A value readable after a write known to be applied had superseded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resurrected {
    /// The key.
    pub key: String,
    /// The value read back in the final state.
    pub value: String,
    /// Id of the applied write whose causal past holds the value.
    pub by: String,
    /// True when that write is a delete.
    pub by_delete: bool,
}

/// A value no put attempt on its key wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phantom {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Where it was seen: `final state` or `read of <attempt id>`.
    pub seen: String,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Write attempts checked.
    pub attempts: usize,
    /// Acknowledged puts.
    pub acked: usize,
    /// Acknowledged puts whose value is in the final state.
    pub present: usize,
    /// Acknowledged puts absent from the final state but superseded by an effective attempt.
    pub superseded: usize,
    /// Violations: acknowledged puts lost.
    pub lost: Vec<Lost>,
    /// Violations: keys readable after a delete that covered all their values.
    pub resurrected: Vec<Resurrected>,
    /// Violations: values nobody wrote.
    pub phantom: Vec<Phantom>,
}

impl Report {
    /// True when no violation was found.
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty() && self.resurrected.is_empty() && self.phantom.is_empty()
    }
}

/// How many violations of each kind [`Report`]'s `Display` names.
const SHOWN: usize = 5;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} attempts, {} acked puts ({} present, {} superseded): {} lost, {} resurrected, {} phantom",
            self.attempts,
            self.acked,
            self.present,
            self.superseded,
            self.lost.len(),
            self.resurrected.len(),
            self.phantom.len()
        )?;
        for l in self.lost.iter().take(SHOWN) {
            write!(
                f,
                "\n  lost: {}={} (its read saw {:?})",
                l.key, l.value, l.read
            )?;
        }
        for r in self.resurrected.iter().take(SHOWN) {
            write!(
                f,
                "\n  resurrected: {}={} after {} {} superseded it",
                r.key,
                r.value,
                if r.by_delete { "delete" } else { "put" },
                r.by
            )?;
        }
        for p in self.phantom.iter().take(SHOWN) {
            write!(f, "\n  phantom: {}={} in {}", p.key, p.value, p.seen)?;
        }
        Ok(())
    }
}

/// Checks `history` against `final_state`, which must name every key the history wrote.
pub fn check(history: &History, final_state: &FinalState) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Attempt>> = BTreeMap::new();
    for a in &history.attempts {
        by_key.entry(&a.key).or_default().push(a);
    }
    let mut report = Report {
        attempts: history.attempts.len(),
        ..Report::default()
    };
    for (key, attempts) in &by_key {
        let Some(finals) = final_state.get(*key) else {
            panic!("the final state does not say what key {key} holds");
        };
        check_key(key, attempts, finals, &mut report);
    }
    // A key never written must read back empty: whatever it holds is a phantom.
    for (key, finals) in final_state {
        if !by_key.contains_key(key.as_str()) {
            check_key(key, &[], finals, &mut report);
        }
    }
    report
}

fn check_key(key: &str, attempts: &[&Attempt], finals: &BTreeSet<String>, report: &mut Report) {
    // Which attempts wrote each value (several only in hand-made histories).
    let mut writers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, a) in attempts.iter().enumerate() {
        if let Some(v) = &a.value {
            writers.entry(v).or_default().push(i);
        }
    }
    let present = |a: &Attempt| a.value.as_ref().is_some_and(|v| finals.contains(v));
    let applied = |a: &Attempt| a.outcome == Outcome::Acked || present(a);
    let effective = causal_past(attempts, &writers, |a| applied(a) || a.value.is_none());
    let covered = causal_past(attempts, &writers, applied);
    for a in attempts {
        let (Some(v), Outcome::Acked) = (&a.value, a.outcome) else {
            continue;
        };
        report.acked += 1;
        if finals.contains(v) {
            report.present += 1;
        } else if effective.contains_key(v.as_str()) {
            report.superseded += 1;
        } else {
            report.lost.push(Lost {
                key: key.to_string(),
                value: v.clone(),
                read: a.read.clone(),
            });
        }
    }
    for v in finals {
        if let Some(&by) = covered.get(v.as_str()) {
            report.resurrected.push(Resurrected {
                key: key.to_string(),
                value: v.clone(),
                by: attempts[by].id.clone(),
                by_delete: attempts[by].value.is_none(),
            });
        }
    }
    let mut seen_phantoms = BTreeSet::new();
    let observed = finals.iter().map(|v| (v, "final state".to_string())).chain(
        attempts
            .iter()
            .flat_map(|a| a.read.iter().map(|v| (v, format!("read of {}", a.id)))),
    );
    for (v, seen) in observed {
        if !writers.contains_key(v.as_str()) && seen_phantoms.insert(v) {
            report.phantom.push(Phantom {
                key: key.to_string(),
                value: v.clone(),
                seen,
            });
        }
    }
}

/// The union of the causal pasts of the attempts `root` selects: each value in it, with the
/// root it was reached from.
fn causal_past<'a>(
    attempts: &[&'a Attempt],
    writers: &HashMap<&str, Vec<usize>>,
    root: impl Fn(&Attempt) -> bool,
) -> HashMap<&'a str, usize> {
    let mut past: HashMap<&str, usize> = HashMap::new();
    let mut queue: Vec<(usize, usize)> = (0..attempts.len())
        .filter(|&i| root(attempts[i]))
        .map(|i| (i, i))
        .collect();
    let mut expanded = vec![false; attempts.len()];
    while let Some((i, from)) = queue.pop() {
        if std::mem::replace(&mut expanded[i], true) {
            continue;
        }
        for v in &attempts[i].read {
            if past.contains_key(v.as_str()) {
                continue;
            }
            past.insert(v, from);
            queue.extend(
                writers
                    .get(v.as_str())
                    .into_iter()
                    .flatten()
                    .map(|&w| (w, from)),
            );
        }
    }
    past
}
