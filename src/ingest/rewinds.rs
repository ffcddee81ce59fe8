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

    /// The LSN of the newest rewind.
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.marks.last().map(|&(lsn, _)| lsn)
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
    pub fn steps(self, cap: Option<i64>) -> Option<(i64, i64)> {
        match (self, cap) {
            (RewoundPoints::Included, _) | (RewoundPoints::Hidden, None) => {
                Some((i64::MIN, i64::MAX))
            }
            (RewoundPoints::Hidden, Some(cap)) => Some((i64::MIN, cap)),
            (RewoundPoints::Only, None) => None,
            (RewoundPoints::Only, Some(cap)) => cap.checked_add(1).map(|low| (low, i64::MAX)),
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
        assert_eq!(Hidden.steps(None), Some((i64::MIN, i64::MAX)));
        assert_eq!(Hidden.steps(Some(7)), Some((i64::MIN, 7)));
        assert_eq!(Only.steps(Some(7)), Some((8, i64::MAX)));
        assert_eq!(Only.steps(None), None);
        assert_eq!(Only.steps(Some(i64::MAX)), None);
        assert_eq!(Included.steps(Some(7)), Some((i64::MIN, i64::MAX)));
    }
}
