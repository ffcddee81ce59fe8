//! Which of a run's points a read sees once the run was rewound.
//!
//! Rewinding a run to step `N` is a WAL record at some LSN `L`: the points
//! logged before it (their records have an LSN below `L`) with a step past
//! `N` are hidden from then on, and the points logged after it take their
//! place. Nothing is rewritten: the run's shard freezes the run's buffer
//! when it applies the rewind, so every source of points (a file, a
//! frozen chunk, the active buffer) holds points from one side of each
//! rewind only, and compaction never merges files across one. A source
//! whose newest point was logged at `newest_lsn` then shows the steps up to
//! its *cap*: the smallest step of the rewinds after `newest_lsn`
//! ([`RewindMarks::cap_for`]), or every step when no rewind came after it.
//!
//! A forked run also reads the sources its parent had when it was forked
//! (see [`super::forks`]): they are *bounded* by the fork's step (and by
//! the parent's rewinds before the fork), and the child's own rewinds cap
//! them further. A source's [`SourceCap`] holds both: the points up to
//! `shown` are shown, those past it up to `bound` were rewound, and those
//! past `bound` are not the run's at all.

use crate::wal::Lsn;

/// The rewinds of one run, in WAL order: `(lsn, step)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewindMarks {
    marks: Vec<(Lsn, i64)>,
}

impl RewindMarks {
    /// Marks from `(lsn, step)` pairs in any order.
    pub fn new(mut marks: Vec<(Lsn, i64)>) -> Self {
        marks.sort_unstable();
        marks.dedup_by_key(|(lsn, _)| *lsn);
        RewindMarks { marks }
    }

    /// Adds the rewind of WAL record `lsn`; `false` (and nothing changes)
    /// when it is not newer than the last one (a record replayed twice).
    pub fn push(&mut self, lsn: Lsn, step: i64) -> bool {
        if self.marks.last().is_some_and(|&(last, _)| last >= lsn) {
            return false;
        }
        self.marks.push((lsn, step));
        true
    }

    /// Whether the run was never rewound.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Whether a rewind's record lies after `after`, up to `through`.
    pub fn any_within(&self, after: Lsn, through: Lsn) -> bool {
        self.marks
            .iter()
            .any(|&(lsn, _)| after < lsn && lsn <= through)
    }

    /// The LSN of the newest rewind.
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.marks.last().map(|&(lsn, _)| lsn)
    }

    /// The smallest step of every rewind: the cap of a source older than
    /// all of them (`None` when never rewound).
    pub fn floor(&self) -> Option<i64> {
        self.marks.iter().map(|&(_, step)| step).min()
    }

    /// The smallest step of the rewinds after `newest_lsn` and before
    /// `before`: the cap a source had when a fork at `before` was made.
    pub fn cap_between(&self, newest_lsn: Lsn, before: Lsn) -> Option<i64> {
        self.marks
            .iter()
            .filter(|&&(lsn, _)| lsn > newest_lsn && lsn < before)
            .map(|&(_, step)| step)
            .min()
    }

    /// The greatest step still shown of points logged at or before
    /// `newest_lsn`: the smallest step of the rewinds after it; `None` when
    /// none came after it (every step is shown).
    pub fn cap_for(&self, newest_lsn: Lsn) -> Option<i64> {
        let first_after = self.marks.partition_point(|&(lsn, _)| lsn <= newest_lsn);
        self.marks[first_after..]
            .iter()
            .map(|&(_, step)| step)
            .min()
    }
}

/// What one source of a run's points contributes to a read: the greatest
/// step shown, and the greatest step that is the run's at all (`None`:
/// no limit). `shown <= bound` always.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCap {
    /// Points past it were rewound.
    pub shown: Option<i64>,
    /// Points past it belong to a fork parent's later history.
    pub bound: Option<i64>,
}

impl SourceCap {
    /// A run's own source with a rewind cap.
    pub fn rewound_at(cap: Option<i64>) -> Self {
        SourceCap {
            shown: cap,
            bound: None,
        }
    }

    /// Whether some of its points are rewound (hidden by default).
    pub fn hides_points(self) -> bool {
        self.shown != self.bound
    }

    /// The same cap further capped by rewinds whose smallest step is
    /// `floor` (the rewinds of a fork child, which all came after its
    /// inherited sources).
    pub fn rewound_below(self, floor: Option<i64>) -> Self {
        SourceCap {
            shown: min_cap(self.shown, floor),
            bound: self.bound,
        }
    }
}

/// The smaller of two caps (`None`: no cap).
pub fn min_cap(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Which points of a rewound run a read returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RewoundPoints {
    /// Only the points shown (the default of every read).
    #[default]
    Hidden,
    /// Every point, the hidden ones too (`include_rewound=true`).
    Included,
    /// Only the hidden points (the SQL table `rewound_metrics`).
    Only,
}

impl RewoundPoints {
    /// The inclusive step range a source with `cap` contributes; `None`
    /// when it contributes nothing.
    pub fn steps(self, cap: SourceCap) -> Option<(i64, i64)> {
        let upper = |cap: Option<i64>| cap.unwrap_or(i64::MAX);
        match self {
            RewoundPoints::Hidden => Some((i64::MIN, upper(cap.shown))),
            RewoundPoints::Included => Some((i64::MIN, upper(cap.bound))),
            RewoundPoints::Only => {
                let low = cap.shown?.checked_add(1)?;
                let high = upper(cap.bound);
                (low <= high).then_some((low, high))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_capped_by_the_smallest_step_of_the_rewinds_after_it() {
        let marks = RewindMarks::new(vec![(20, 150), (10, 200), (30, 180)]);
        assert_eq!(marks.cap_for(5), Some(150));
        assert_eq!(
            marks.cap_for(10),
            Some(150),
            "a rewind caps what came before it"
        );
        assert_eq!(marks.cap_for(15), Some(150));
        assert_eq!(marks.cap_for(25), Some(180));
        assert_eq!(marks.cap_for(30), None);
        assert_eq!(marks.last_lsn(), Some(30));
        assert_eq!(RewindMarks::default().cap_for(0), None);
    }

    #[test]
    fn replayed_rewinds_are_not_counted_twice() {
        let mut marks = RewindMarks::default();
        assert!(marks.push(10, 5));
        assert!(!marks.push(10, 5));
        assert!(!marks.push(9, 1));
        assert!(marks.push(11, 7));
        assert_eq!(marks.cap_for(0), Some(5));
    }

    #[test]
    fn each_mode_shows_its_side_of_the_cap() {
        use RewoundPoints::*;
        let own = SourceCap::rewound_at;
        assert_eq!(Hidden.steps(own(None)), Some((i64::MIN, i64::MAX)));
        assert_eq!(Hidden.steps(own(Some(7))), Some((i64::MIN, 7)));
        assert_eq!(Only.steps(own(Some(7))), Some((8, i64::MAX)));
        assert_eq!(Only.steps(own(None)), None);
        assert_eq!(Only.steps(own(Some(i64::MAX))), None);
        assert_eq!(Included.steps(own(Some(7))), Some((i64::MIN, i64::MAX)));
        // An inherited source: bounded by the fork, rewound by the child.
        let inherited = SourceCap {
            shown: Some(5),
            bound: Some(9),
        };
        assert!(inherited.hides_points());
        assert_eq!(Hidden.steps(inherited), Some((i64::MIN, 5)));
        assert_eq!(Included.steps(inherited), Some((i64::MIN, 9)));
        assert_eq!(Only.steps(inherited), Some((6, 9)));
        let whole = SourceCap {
            shown: Some(9),
            bound: Some(9),
        };
        assert!(!whole.hides_points());
        assert_eq!(Only.steps(whole), None);
        assert_eq!(whole.rewound_below(Some(3)).shown, Some(3));
        assert_eq!(whole.rewound_below(None), whole);
        assert_eq!(min_cap(None, Some(2)), Some(2));
    }

    #[test]
    fn a_fork_sees_the_rewinds_before_it_only() {
        let marks = RewindMarks::new(vec![(10, 50), (20, 30), (30, 10)]);
        assert_eq!(marks.floor(), Some(10));
        assert_eq!(marks.cap_between(5, 25), Some(30));
        assert_eq!(marks.cap_between(15, 25), Some(30));
        assert_eq!(marks.cap_between(5, 15), Some(50));
        assert_eq!(marks.cap_between(20, 30), None);
        assert_eq!(RewindMarks::default().floor(), None);
    }
}
