//! Dormant runs: settled runs a shard keeps only by their key summaries.
//! Their files, footers and key dictionary are let go, and loaded again
//! from disk (the run's manifest, else its footers) by a [`RunLoader`] when
//! the run is read point by point or written again.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use super::{LoadedRun, SummaryView};
use crate::model::{ExperimentId, KeySummary, RunId};
use crate::storage::dormant_log::{DormantEntry, DormantLog};
use crate::wal::Lsn;

/// Why a dormant run could not be loaded again.
pub(crate) type WakeError = Box<dyn std::error::Error + Send + Sync>;

/// Loads the files and summaries of a settled run again from disk (the
/// engine's start-up code, for one run).
pub(crate) trait RunLoader: Send + Sync {
    /// The run as its directory describes it now.
    fn load(&self, experiment_id: ExperimentId, run_id: RunId) -> Result<LoadedRun, WakeError>;
}

/// Key names shared by the dormant runs of one owner (a shard, or the
/// start that hands runs to shards): each distinct name is kept once.
#[derive(Default)]
pub(crate) struct KeyNames(HashSet<Arc<str>>);

impl KeyNames {
    /// The shared copy of `name`.
    pub(crate) fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(name) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(Arc::clone(&shared));
        shared
    }
}

/// A settled run (ended, every point in files, no rewind or fork) held
/// only by what searches and summaries need: about 80 bytes per key plus
/// a fixed 40, where a loaded run holds its files, key dictionary and
/// buffers too.
pub(crate) struct DormantRun {
    experiment_id: ExperimentId,
    /// The sequence number the run's next file takes, so that a run whose
    /// files could not be loaded again never writes over one.
    next_seq: u64,
    /// The newest WAL record its files hold.
    max_lsn: Lsn,
    /// Every key's summary, in key order.
    summaries: Box<[(Arc<str>, KeySummary)]>,
}

impl DormantRun {
    /// A dormant run with these summaries (in any order), its key names
    /// shared through `names`.
    pub(crate) fn new(
        experiment_id: ExperimentId,
        next_seq: u64,
        max_lsn: Lsn,
        summaries: impl IntoIterator<Item = (String, KeySummary)>,
        names: &mut KeyNames,
    ) -> DormantRun {
        let mut summaries: Vec<(Arc<str>, KeySummary)> = summaries
            .into_iter()
            .map(|(key, summary)| (names.get(&key), summary))
            .collect();
        summaries.sort_by(|a, b| a.0.cmp(&b.0));
        DormantRun {
            experiment_id,
            next_seq,
            max_lsn,
            summaries: summaries.into_boxed_slice(),
        }
    }

    /// The run's experiment.
    pub(crate) fn experiment_id(&self) -> ExperimentId {
        self.experiment_id
    }

    /// The sequence number the run's next file takes.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The newest WAL record its files hold.
    pub(crate) fn max_lsn(&self) -> Lsn {
        self.max_lsn
    }

    /// The run as the dormant-run log records it.
    pub(crate) fn entry(&self, run_id: RunId) -> DormantEntry {
        DormantEntry {
            run_id,
            experiment_id: self.experiment_id,
            next_seq: self.next_seq,
            max_lsn: self.max_lsn,
            summaries: self.summaries(),
        }
    }

    /// The run a record of the dormant-run log describes.
    pub(crate) fn from_entry(entry: DormantEntry, names: &mut KeyNames) -> DormantRun {
        DormantRun::new(
            entry.experiment_id,
            entry.next_seq,
            entry.max_lsn,
            entry.summaries,
            names,
        )
    }

    /// Every key's summary, in key order.
    pub(crate) fn summaries(&self) -> Vec<(String, KeySummary)> {
        self.summaries
            .iter()
            .map(|(key, summary)| (key.to_string(), *summary))
            .collect()
    }

    /// What reads show: every point's summaries (a dormant run was never
    /// rewound).
    pub(crate) fn summary_view(&self) -> SummaryView {
        SummaryView::Complete(self.summaries())
    }

    /// [`DormantRun::summary_view`] limited to `keys` (all when `None`).
    pub(crate) fn summary_view_of(&self, keys: Option<&BTreeSet<String>>) -> SummaryView {
        let Some(keys) = keys else {
            return self.summary_view();
        };
        SummaryView::Complete(
            self.summaries
                .iter()
                .filter(|(key, _)| keys.contains(key.as_ref()))
                .map(|(key, summary)| (key.to_string(), *summary))
                .collect(),
        )
    }

    /// Heap and inline bytes the run holds (its key names are shared).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + std::mem::size_of_val(&*self.summaries)
    }
}

/// The runs a shard starts with: loaded ones, and dormant ones with the
/// loader that brings them back.
#[derive(Default)]
pub(crate) struct StartingRuns {
    /// Runs with their files (not settled, rewound, forked, or without a
    /// manifest to load them from again).
    pub(crate) loaded: Vec<LoadedRun>,
    /// Settled runs held by their summaries.
    pub(crate) dormant: Vec<(RunId, DormantRun)>,
    /// Loads dormant runs again; `None` keeps every run loaded (nothing
    /// goes dormant).
    pub(crate) loader: Option<Arc<dyn RunLoader>>,
    /// Where runs going dormant, and dormant runs written to again, are
    /// recorded for the next start.
    pub(crate) log: Option<Arc<DormantLog>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(value: f64) -> KeySummary {
        KeySummary::of_point(1, 2, value)
    }

    #[test]
    fn a_dormant_run_keeps_its_summaries_in_key_order_and_shares_names() {
        let mut names = KeyNames::default();
        let experiment = ExperimentId::parse("3").unwrap();
        let first = DormantRun::new(
            experiment,
            4,
            9,
            [
                ("loss".to_string(), summary(0.5)),
                ("acc".to_string(), summary(0.9)),
            ],
            &mut names,
        );
        let second = DormantRun::new(
            experiment,
            2,
            9,
            [("loss".to_string(), summary(0.7))],
            &mut names,
        );
        assert_eq!(
            first.summaries(),
            vec![
                ("acc".to_string(), summary(0.9)),
                ("loss".to_string(), summary(0.5))
            ]
        );
        assert_eq!(first.next_seq(), 4);
        assert!(Arc::ptr_eq(&first.summaries[1].0, &second.summaries[0].0));
        // Ten keys: well under a kilobyte, names aside.
        let ten = DormantRun::new(
            experiment,
            2,
            9,
            (0..10).map(|key| (format!("key{key}"), summary(1.0))),
            &mut names,
        );
        assert!(ten.held_bytes() <= 40 + 10 * 80, "{}", ten.held_bytes());
        // As the dormant-run log records it, and back.
        let back = DormantRun::from_entry(first.entry(RunId::new_random()), &mut names);
        assert_eq!(back.summaries(), first.summaries());
        assert_eq!((back.next_seq(), back.max_lsn()), (4, 9));
    }
}
