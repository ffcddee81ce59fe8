//! Everything a shard keeps for one run: its key dictionary and per-key
//! summaries, the active buffer, frozen chunks waiting to be persisted, and
//! its persisted files.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::buffer::{ActiveBuffer, FrozenChunk};
use super::dormant::{DormantRun, KeyNames};
use super::rewinds::{RewindMarks, SourceCap, min_cap};
use super::views::FrozenSource;
use super::{RunPoints, SeriesSources, SummaryView};
use crate::model::{ExperimentId, KeySummary, MetricBatch, MetricSeries, RunId};
use crate::storage::PersistedFile;
use crate::wal::Lsn;

/// Up to this many keys a run finds a key's id by scanning its names,
/// which is as fast as hashing for so few and keeps no second copy of them.
const SCANNED_KEYS: usize = 16;

/// Run key ids by name (boxed in [`RunState`], which most runs keep
/// without one).
struct KeyLookup(HashMap<String, u32>);

/// A run as its shard sees it.
pub(crate) struct RunState {
    pub(crate) experiment_id: ExperimentId,
    /// Key names by run key id, shared with frozen chunks (copied on
    /// write when a key is added while a chunk holds them).
    key_names: Arc<Vec<String>>,
    /// Run key ids by name, once the run has more keys than a scan of
    /// `key_names` finds quickly (most runs never need it).
    key_lookup: Option<Box<KeyLookup>>,
    summaries: Vec<Option<KeySummary>>,
    pub(crate) active: ActiveBuffer,
    pub(crate) frozen: Vec<Arc<FrozenChunk>>,
    pub(crate) files: Vec<Arc<PersistedFile>>,
    pub(crate) next_seq: u64,
    pub(crate) compacting: bool,
    pub(crate) compaction_retry_at: Option<std::time::Instant>,
    pub(crate) ended: bool,
    /// Whether the run's manifest names exactly its files (written since
    /// they last changed, or the start read them from it).
    pub(crate) manifest_current: bool,
    /// The last WAL record applied to the run by this process.
    applied_lsn: Lsn,
    /// When the run was last written or read point by point: an idle
    /// settled run goes dormant ([`RunState::can_go_dormant`]).
    pub(crate) last_used: std::time::Instant,
    /// Whether the dormant-run log's last record of the run is a
    /// `Dormant` one that describes it (it was loaded again only to be
    /// read): a write must record it awake first, and going dormant again
    /// needs no new record.
    pub(crate) logged_dormant: bool,
    /// The run's rewinds, as far as this shard has applied them.
    pub(crate) rewinds: RewindMarks,
    /// Summaries of the points logged since the newest rewind (`None`
    /// until the run is rewound).
    since_rewind: Option<SinceRewind>,
    /// The LSNs at which runs were forked from this one, in order: like
    /// rewinds, the buffer was frozen at each, and compaction never merges
    /// files across one (a fork reads the files before it).
    fork_points: Vec<Lsn>,
}

/// What a rewound run's shard knows of the points after its newest rewind.
enum SinceRewind {
    /// Their summaries, by run key id.
    Known(Vec<Option<KeySummary>>),
    /// Files written after the rewind were found before the rewind was
    /// replayed: their points are not summarised apart (the engine reads
    /// them).
    Unknown,
}

impl RunState {
    /// The state of a run as start-up (or a replica's refresh) found it
    /// on disk.
    pub(crate) fn loaded(run: super::LoadedRun) -> RunState {
        let mut state = RunState::new(
            run.experiment_id,
            run.files,
            run.summaries,
            run.rewinds,
            run.since_rewind,
            run.fork_points,
        );
        state.manifest_current = run.manifest_current;
        state
    }

    /// A run with the given persisted files (in sequence order) and the
    /// summaries read from their footers: of every file, and of the files
    /// after the run's newest rewind (`rewinds`).
    pub(crate) fn new(
        experiment_id: ExperimentId,
        files: Vec<Arc<PersistedFile>>,
        summaries: Vec<(String, KeySummary)>,
        rewinds: RewindMarks,
        since_rewind: Vec<(String, KeySummary)>,
        mut fork_points: Vec<Lsn>,
    ) -> Self {
        fork_points.sort_unstable();
        fork_points.dedup();
        let next_seq = files.iter().map(|file| file.seq() + 1).max().unwrap_or(1);
        let mut run = RunState {
            experiment_id,
            key_names: Arc::default(),
            key_lookup: None,
            summaries: Vec::new(),
            active: ActiveBuffer::default(),
            frozen: Vec::new(),
            files,
            next_seq,
            compacting: false,
            compaction_retry_at: None,
            ended: false,
            manifest_current: false,
            applied_lsn: 0,
            last_used: std::time::Instant::now(),
            logged_dormant: false,
            since_rewind: None,
            rewinds,
            fork_points,
        };
        for (key, summary) in summaries {
            let id = run.intern(&key) as usize;
            run.summaries[id] = Some(summary);
        }
        if !run.rewinds.is_empty() {
            let since: Vec<(usize, KeySummary)> = since_rewind
                .into_iter()
                .map(|(key, summary)| (run.intern(&key) as usize, summary))
                .collect();
            let mut known = vec![None; run.key_names.len()];
            for (id, summary) in since {
                known[id] = Some(summary);
            }
            run.since_rewind = Some(SinceRewind::Known(known));
        }
        run
    }

    /// Records a rewind the shard applies in WAL order, after it froze the
    /// active buffer (so no source holds points from both sides of it).
    /// `false` when it was applied before (replay).
    pub(crate) fn rewind(&mut self, lsn: Lsn, step: i64) -> bool {
        if !self.rewinds.push(lsn, step) {
            return false;
        }
        self.applied_lsn = self.applied_lsn.max(lsn);
        // Only in replay can a file written after the rewind be there.
        let later_files = self.files.iter().any(|file| file.newest_lsn() > lsn);
        self.since_rewind = Some(if later_files {
            SinceRewind::Unknown
        } else {
            SinceRewind::Known(vec![None; self.key_names.len()])
        });
        true
    }

    /// The greatest step shown of a source whose newest point was logged
    /// at `newest_lsn` (`None`: every step).
    fn cap_for(&self, newest_lsn: Lsn) -> Option<i64> {
        self.rewinds.cap_for(newest_lsn)
    }

    /// Records that a run was forked from this one at WAL record `lsn`,
    /// after the shard froze the active buffer. `false` when known.
    pub(crate) fn add_fork_point(&mut self, lsn: Lsn) -> bool {
        if self.fork_points.contains(&lsn) {
            return false;
        }
        let position = self.fork_points.partition_point(|&known| known < lsn);
        self.fork_points.insert(position, lsn);
        self.applied_lsn = self.applied_lsn.max(lsn);
        true
    }

    /// Whether a rewind or a fork lies after WAL record `after`, up to
    /// `through`: points on either side never share a file.
    pub(crate) fn boundary_within(&self, after: Lsn, through: Lsn) -> bool {
        self.rewinds.any_within(after, through)
            || self
                .fork_points
                .iter()
                .any(|&lsn| after < lsn && lsn <= through)
    }

    /// Where the files logged after the newest rewind or fork start:
    /// compaction merges no file before it with one after it.
    pub(crate) fn first_file_after_boundaries(&self) -> usize {
        let last = self
            .rewinds
            .last_lsn()
            .into_iter()
            .chain(self.fork_points.last().copied())
            .max();
        match last {
            None => 0,
            Some(last) => self.files.partition_point(|file| file.newest_lsn() < last),
        }
    }

    /// The summaries reads show: every point's when the run was never
    /// rewound, else those since the newest rewind (the engine adds the
    /// shown points before it).
    pub(crate) fn summary_view(&self) -> SummaryView {
        self.summary_view_of(None)
    }

    /// [`RunState::summary_view`] limited to `keys` (all when `None`); a
    /// rewound run's view needs the engine, which limits it after.
    pub(crate) fn summary_view_of(&self, keys: Option<&BTreeSet<String>>) -> SummaryView {
        match (&self.since_rewind, self.rewinds.last_lsn()) {
            (Some(SinceRewind::Known(known)), Some(last_rewind)) => SummaryView::SinceRewind {
                last_rewind,
                keys: self.named_summaries(known),
            },
            (Some(SinceRewind::Unknown), Some(last_rewind)) => SummaryView::Unknown { last_rewind },
            _ => match keys {
                None => SummaryView::Complete(self.summaries()),
                Some(keys) => {
                    let mut chosen: Vec<(String, KeySummary)> = self
                        .key_names
                        .iter()
                        .zip(self.summaries.iter())
                        .filter(|(key, _)| keys.contains(key.as_str()))
                        .filter_map(|(key, summary)| summary.map(|summary| (key.clone(), summary)))
                        .collect();
                    chosen.sort_by(|a, b| a.0.cmp(&b.0));
                    SummaryView::Complete(chosen)
                }
            },
        }
    }

    /// Distinct keys the run has.
    pub(crate) fn key_count(&self) -> usize {
        self.key_names.len()
    }

    /// The run key id of `key`, adding it when new.
    pub(crate) fn intern(&mut self, key: &str) -> u32 {
        if let Some(id) = self.key_id(key) {
            return id;
        }
        let id = self.key_names.len() as u32;
        Arc::make_mut(&mut self.key_names).push(key.to_string());
        if let Some(lookup) = &mut self.key_lookup {
            lookup.0.insert(key.to_string(), id);
        } else if self.key_names.len() > SCANNED_KEYS {
            self.key_lookup = Some(Box::new(KeyLookup(
                self.key_names
                    .iter()
                    .enumerate()
                    .map(|(id, name)| (name.clone(), id as u32))
                    .collect(),
            )));
        }
        self.summaries.push(None);
        if let Some(SinceRewind::Known(known)) = &mut self.since_rewind {
            known.push(None);
        }
        id
    }

    /// The run key id of `key`, if the run has it.
    pub(crate) fn key_id(&self, key: &str) -> Option<u32> {
        match &self.key_lookup {
            Some(lookup) => lookup.0.get(key).copied(),
            None => self
                .key_names
                .iter()
                .position(|name| name == key)
                .map(|id| id as u32),
        }
    }

    /// The key dictionary, shared with frozen chunks.
    pub(crate) fn key_names(&self) -> Arc<Vec<String>> {
        Arc::clone(&self.key_names)
    }

    /// Buffers the points of WAL record `lsn` and updates the summaries.
    pub(crate) fn apply(&mut self, lsn: Lsn, batch: &MetricBatch) {
        self.applied_lsn = self.applied_lsn.max(lsn);
        let mapping: Vec<u32> = batch.keys.iter().map(|key| self.intern(key)).collect();
        let key_ids: Vec<u32> = batch
            .key_indices
            .iter()
            .map(|&batch_key| mapping[batch_key as usize])
            .collect();
        summarise(&mut self.summaries, &key_ids, batch);
        // A rewound run also summarises what it logs after the rewind (a
        // replayed record from before it is not).
        if let Some(SinceRewind::Known(known)) = &mut self.since_rewind
            && self.rewinds.last_lsn().is_none_or(|last| lsn > last)
        {
            summarise(known, &key_ids, batch);
        }
        self.active.append(
            lsn,
            &key_ids,
            &batch.steps,
            &batch.timestamps,
            &batch.values,
        );
    }

    /// Every key's summary of every point (hidden ones too), in key
    /// order.
    pub(crate) fn summaries(&self) -> Vec<(String, KeySummary)> {
        self.named_summaries(&self.summaries)
    }

    fn named_summaries(&self, summaries: &[Option<KeySummary>]) -> Vec<(String, KeySummary)> {
        let mut all: Vec<(String, KeySummary)> = self
            .key_names
            .iter()
            .zip(summaries)
            .filter_map(|(key, summary)| summary.map(|summary| (key.clone(), summary)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The oldest LSN of a record not yet persisted to a file (and, with
    /// an object store, uploaded there).
    pub(crate) fn min_unpersisted_lsn(&self) -> Option<Lsn> {
        self.frozen
            .iter()
            .map(|chunk| chunk.lsn_range().0)
            .chain(self.active.first_lsn())
            .chain(
                self.files
                    .iter()
                    .filter_map(|file| file.oldest_unuploaded_lsn()),
            )
            .min()
    }

    /// Where the points of `key` are: files, frozen chunks and the active
    /// buffer's sealed segments (read later, off the shard thread) and a
    /// copy of the key's points in the active buffer's unsealed tail.
    pub(crate) fn sources_for(&self, key: &str) -> SeriesSources {
        let key_id = self.key_id(key);
        let mut active = MetricSeries::default();
        if let Some(id) = key_id {
            self.active.collect_tail_key(id, &mut active);
        }
        let frozen = if key_id.is_some() {
            self.frozen.clone()
        } else {
            Vec::new()
        };
        SeriesSources {
            file_caps: self
                .files
                .iter()
                .map(|file| SourceCap::rewound_at(self.cap_for(file.newest_lsn())))
                .collect(),
            files: self.files.clone(),
            frozen: match key_id {
                Some(id) => frozen
                    .into_iter()
                    .map(|chunk| FrozenSource {
                        cap: SourceCap::rewound_at(self.cap_for(chunk.lsn_range().1)),
                        chunk,
                        key_id: id,
                    })
                    .collect(),
                None => Vec::new(),
            },
            key_id,
            sealed: if key_id.is_some() {
                self.active.sealed().to_vec()
            } else {
                Vec::new()
            },
            active,
            applied_lsn: self.applied_lsn,
            summary: key_id.and_then(|id| self.summaries[id as usize]),
            last_rewind: self.rewinds.last_lsn(),
            rewind_floor: self.rewinds.floor(),
            inherited: false,
        }
    }

    /// The cap of a source whose newest point was logged at `newest_lsn`,
    /// as a run forked from this one at `before` with step `bound` reads
    /// it: bounded by the step and by this run's rewinds between the two.
    fn inherited_cap(&self, newest_lsn: Lsn, before: Lsn, bound: i64) -> SourceCap {
        let cap = min_cap(Some(bound), self.rewinds.cap_between(newest_lsn, before));
        SourceCap {
            shown: cap,
            bound: cap,
        }
    }

    /// The sources of `key` that a run forked from this one at WAL record
    /// `before` with step `bound` inherits: the files and frozen chunks
    /// logged before the fork (the buffer was frozen at it), capped as
    /// they were then.
    pub(crate) fn inherited_sources_for(
        &self,
        key: &str,
        before: Lsn,
        bound: i64,
    ) -> SeriesSources {
        let mut sources = SeriesSources::empty();
        for file in self.files.iter().filter(|file| file.newest_lsn() < before) {
            sources.files.push(Arc::clone(file));
            sources
                .file_caps
                .push(self.inherited_cap(file.newest_lsn(), before, bound));
        }
        if let Some(key_id) = self.key_id(key) {
            for chunk in self
                .frozen
                .iter()
                .filter(|chunk| chunk.lsn_range().1 < before)
            {
                sources.frozen.push(FrozenSource {
                    chunk: Arc::clone(chunk),
                    key_id,
                    cap: self.inherited_cap(chunk.lsn_range().1, before, bound),
                });
            }
        }
        sources.inherited = true;
        sources
    }

    /// Every point a run forked from this one at `before` with step `bound`
    /// inherits (see [`Self::inherited_sources_for`]), as run `run_id`'s.
    pub(crate) fn inherited_points(&self, run_id: RunId, before: Lsn, bound: i64) -> RunPoints {
        let files: Vec<Arc<PersistedFile>> = self
            .files
            .iter()
            .filter(|file| file.newest_lsn() < before)
            .cloned()
            .collect();
        let frozen: Vec<Arc<FrozenChunk>> = self
            .frozen
            .iter()
            .filter(|chunk| chunk.lsn_range().1 < before)
            .cloned()
            .collect();
        RunPoints {
            run_id,
            experiment_id: self.experiment_id,
            file_caps: files
                .iter()
                .map(|file| self.inherited_cap(file.newest_lsn(), before, bound))
                .collect(),
            files,
            frozen_caps: frozen
                .iter()
                .map(|chunk| self.inherited_cap(chunk.lsn_range().1, before, bound))
                .collect(),
            frozen,
            active: None,
            rewind_floor: None,
        }
    }

    /// Every point of the run: files and frozen chunks (shared) and a copy
    /// of the active buffer, each point in exactly one of them.
    pub(crate) fn points_snapshot(&mut self, run_id: RunId) -> RunPoints {
        let active = if self.active.rows() > 0 {
            let names = self.key_names();
            Some(self.active.copy_points(names))
        } else {
            None
        };
        RunPoints {
            run_id,
            experiment_id: self.experiment_id,
            file_caps: self
                .files
                .iter()
                .map(|file| SourceCap::rewound_at(self.cap_for(file.newest_lsn())))
                .collect(),
            files: self.files.clone(),
            frozen_caps: self
                .frozen
                .iter()
                .map(|chunk| SourceCap::rewound_at(self.cap_for(chunk.lsn_range().1)))
                .collect(),
            frozen: self.frozen.clone(),
            active,
            rewind_floor: self.rewinds.floor(),
        }
    }

    /// Whether the run's files are settled: it ended, and nothing of it is
    /// buffered, being written or being compacted.
    pub(crate) fn is_settled(&self) -> bool {
        self.ended && self.active.rows() == 0 && self.frozen.is_empty() && !self.compacting
    }

    /// Whether the run can be let go of and loaded again from its
    /// manifest: settled, its manifest current, every file uploaded (the
    /// WAL keeps nothing for it) and held by no reader (a file replaced
    /// later is deleted only once its holders let go, which a file loaded
    /// again would not know), never rewound or forked from (what those
    /// keep is not in the manifest).
    pub(crate) fn can_go_dormant(&self) -> bool {
        self.is_settled()
            && self.manifest_current
            && !self.files.is_empty()
            && self.rewinds.is_empty()
            && self.since_rewind.is_none()
            && self.fork_points.is_empty()
            && self
                .files
                .iter()
                .all(|file| Arc::strong_count(file) == 1 && file.is_uploaded())
    }

    /// The run as a dormant one: its summaries only.
    pub(crate) fn into_dormant(self, names: &mut KeyNames) -> DormantRun {
        let max_lsn = self
            .files
            .iter()
            .map(|file| file.newest_lsn())
            .max()
            .unwrap_or(0);
        DormantRun::new(
            self.experiment_id,
            self.next_seq,
            max_lsn,
            self.summaries(),
            names,
        )
    }

    /// Adds a persisted file, keeping sequence order.
    pub(crate) fn add_file(&mut self, file: Arc<PersistedFile>) {
        self.manifest_current = false;
        let position = self
            .files
            .partition_point(|existing| existing.seq() < file.seq());
        self.files.insert(position, file);
    }
}

/// Adds the points of `batch` (their run key ids in `key_ids`) to the
/// summaries by key id.
fn summarise(summaries: &mut [Option<KeySummary>], key_ids: &[u32], batch: &MetricBatch) {
    for (point, &id) in key_ids.iter().enumerate() {
        let (step, timestamp, value) = (
            batch.steps[point],
            batch.timestamps[point],
            batch.values[point],
        );
        match &mut summaries[id as usize] {
            Some(summary) => summary.add_point(step, timestamp, value),
            slot @ None => *slot = Some(KeySummary::of_point(step, timestamp, value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(keys: &[&str], step: i64) -> MetricBatch {
        MetricBatch {
            keys: keys.iter().map(|key| key.to_string()).collect(),
            key_indices: (0..keys.len() as u32).collect(),
            steps: vec![step; keys.len()],
            timestamps: vec![step * 10; keys.len()],
            values: (0..keys.len()).map(|index| index as f64).collect(),
        }
    }

    fn empty_run() -> RunState {
        RunState::new(
            ExperimentId::new(1),
            Vec::new(),
            Vec::new(),
            RewindMarks::default(),
            Vec::new(),
            Vec::new(),
        )
    }

    #[test]
    fn key_ids_are_found_by_scan_then_by_lookup_past_the_scanned_count() {
        let mut run = empty_run();
        let names: Vec<String> = (0..40).map(|index| format!("key/{index}")).collect();
        for (id, name) in names.iter().enumerate() {
            assert_eq!(run.intern(name), id as u32);
            assert_eq!(run.key_lookup.is_some(), id + 1 > SCANNED_KEYS);
            // Every key so far, old and new, keeps its id.
            for (known, known_name) in names[..=id].iter().enumerate() {
                assert_eq!(run.key_id(known_name), Some(known as u32));
            }
            assert_eq!(run.key_id("missing"), None);
        }
        assert_eq!(run.intern("key/3"), 3, "a known key is not added again");
        assert_eq!(run.key_count(), 40);
        assert_eq!(*run.key_names(), names);
    }

    #[test]
    fn a_shared_key_dictionary_is_copied_when_a_key_is_added() {
        let mut run = empty_run();
        run.apply(1, &batch(&["loss", "acc"], 0));
        let frozen_with = run.key_names();
        run.apply(2, &batch(&["loss", "lr"], 1));
        assert_eq!(*frozen_with, ["loss", "acc"], "a frozen chunk's names stay");
        assert_eq!(*run.key_names(), ["loss", "acc", "lr"]);
        let summaries = run.summaries();
        assert_eq!(summaries.len(), 3);
        assert_eq!(summaries[1].0, "loss");
        assert_eq!(summaries[1].1.count, 2);
    }

    #[test]
    fn an_idle_run_is_small() {
        // What every finished run keeps in its shard's map: the buffer's
        // columns are not among it until the run logs again.
        let size = std::mem::size_of::<RunState>();
        assert!(size <= 320, "RunState is {size} bytes");
        assert!(std::mem::size_of::<ActiveBuffer>() <= 96);
    }
}
