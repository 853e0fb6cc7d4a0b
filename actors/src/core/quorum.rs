//! Consistency levels and quorum accounting for one request.

use serde::{Deserialize, Serialize};

/// How many replicas must answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// One replica.
    One,
    /// A majority of the N replicas.
    Quorum,
    /// All N replicas.
    All,
    /// Exactly this many replicas (1..=N).
    N(usize),
}

impl Consistency {
    /// The number of replies needed out of `replicas`; `None` when `N(k)` asks for more than
    /// exist or for none.
    pub fn required(self, replicas: usize) -> Option<usize> {
        match self {
            Consistency::One => Some(1),
            Consistency::Quorum => Some(replicas / 2 + 1),
            Consistency::All => Some(replicas),
            Consistency::N(k) if (1..=replicas).contains(&k) => Some(k),
            Consistency::N(_) => None,
        }
    }
}

impl std::str::FromStr for Consistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "one" => Ok(Consistency::One),
            "quorum" => Ok(Consistency::Quorum),
            "all" => Ok(Consistency::All),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|&k| k > 0)
                .map(Consistency::N)
                .ok_or_else(|| {
                    format!("consistency must be one, quorum, all or a positive number, got '{s}'")
                }),
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Consistency::One => f.write_str("one"),
            Consistency::Quorum => f.write_str("quorum"),
            Consistency::All => f.write_str("all"),
            Consistency::N(k) => write!(f, "{k}"),
        }
    }
}

/// Tracks the replies of one fanned-out request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    needed: usize,
    asked: usize,
    ok: usize,
    failed: usize,
}

/// Where a request stands after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Enough replicas answered.
    Met,
    /// Too many failed: success is no longer possible.
    Impossible,
    /// Keep waiting.
    Pending,
}

impl Tally {
    /// A request that needs `needed` successes out of `asked` replicas.
    pub fn new(needed: usize, asked: usize) -> Tally {
        Tally {
            needed,
            asked,
            ok: 0,
            failed: 0,
        }
    }

    /// Records a success.
    pub fn success(&mut self) -> Verdict {
        self.ok += 1;
        self.verdict()
    }

    /// Records a failure.
    pub fn failure(&mut self) -> Verdict {
        self.failed += 1;
        self.verdict()
    }

    /// Successes so far.
    pub fn successes(&self) -> usize {
        self.ok
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        if self.ok >= self.needed {
            Verdict::Met
        } else if self.asked - self.failed < self.needed {
            Verdict::Impossible
        } else {
            Verdict::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn levels() {
        assert_eq!(Consistency::Quorum.required(3), Some(2));
        assert_eq!(Consistency::Quorum.required(5), Some(3));
        assert_eq!(Consistency::All.required(3), Some(3));
        assert_eq!(Consistency::N(4).required(3), None);
        assert_eq!("2".parse::<Consistency>(), Ok(Consistency::N(2)));
        assert!("0".parse::<Consistency>().is_err());
        assert!("most".parse::<Consistency>().is_err());
    }

    proptest! {
        #[test]
        fn tally_is_met_exactly_when_enough_succeed(needed in 1usize..5, outcomes in prop::collection::vec(any::<bool>(), 1..8)) {
            let asked = outcomes.len();
            prop_assume!(needed <= asked);
            let mut t = Tally::new(needed, asked);
            let mut decided = None;
            for &ok in &outcomes {
                let v = if ok { t.success() } else { t.failure() };
                if v != Verdict::Pending && decided.is_none() {
                    decided = Some(v);
                }
            }
            let oks = outcomes.iter().filter(|&&o| o).count();
            prop_assert_eq!(decided, Some(if oks >= needed { Verdict::Met } else { Verdict::Impossible }));
        }
    }
}
