//! Everything a shard keeps for one run: its key dictionary and per-key
//! summaries, the active buffer, frozen chunks waiting to be persisted, and
//! its persisted files.

use std::collections::HashMap;
use std::sync::Arc;

use super::buffer::{ActiveBuffer, FrozenChunk};
use super::{RunPoints, SeriesSources};
use crate::model::{ExperimentId, KeySummary, MetricBatch, MetricSeries, RunId};
use crate::storage::PersistedFile;
use crate::wal::Lsn;

/// A run as its shard sees it.
pub(crate) struct RunState {
    pub(crate) experiment_id: ExperimentId,
    key_names: Vec<String>,
    key_lookup: HashMap<String, u32>,
    key_names_shared: Option<Arc<Vec<String>>>,
    summaries: Vec<Option<KeySummary>>,
    pub(crate) active: ActiveBuffer,
    pub(crate) frozen: Vec<Arc<FrozenChunk>>,
    pub(crate) files: Vec<Arc<PersistedFile>>,
    pub(crate) next_seq: u64,
    pub(crate) compacting: bool,
    pub(crate) compaction_retry_at: Option<std::time::Instant>,
    pub(crate) ended: bool,
    /// The last WAL record applied to the run by this process.
    applied_lsn: Lsn,
}

impl RunState {
    /// A run with the given persisted files (in sequence order) and the
    /// summaries read from their footers.
    pub(crate) fn new(
        experiment_id: ExperimentId,
        files: Vec<Arc<PersistedFile>>,
        summaries: Vec<(String, KeySummary)>,
    ) -> Self {
        let next_seq = files.iter().map(|file| file.seq() + 1).max().unwrap_or(1);
        let mut run = RunState {
            experiment_id,
            key_names: Vec::new(),
            key_lookup: HashMap::new(),
            key_names_shared: None,
            summaries: Vec::new(),
            active: ActiveBuffer::default(),
            frozen: Vec::new(),
            files,
            next_seq,
            compacting: false,
            compaction_retry_at: None,
            ended: false,
            applied_lsn: 0,
        };
        for (key, summary) in summaries {
            let id = run.intern(&key) as usize;
            run.summaries[id] = Some(summary);
        }
        run
    }

    /// Distinct keys the run has.
    pub(crate) fn key_count(&self) -> usize {
        self.key_names.len()
    }

    /// The run key id of `key`, adding it when new.
    pub(crate) fn intern(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.key_lookup.get(key) {
            return id;
        }
        let id = self.key_names.len() as u32;
        self.key_names.push(key.to_string());
        self.key_lookup.insert(key.to_string(), id);
        self.summaries.push(None);
        self.key_names_shared = None;
        id
    }

    /// The run key id of `key`, if the run has it.
    pub(crate) fn key_id(&self, key: &str) -> Option<u32> {
        self.key_lookup.get(key).copied()
    }

    /// The key dictionary, shared with frozen chunks.
    pub(crate) fn key_names(&mut self) -> Arc<Vec<String>> {
        Arc::clone(
            self.key_names_shared
                .get_or_insert_with(|| Arc::new(self.key_names.clone())),
        )
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
        for (point, &id) in key_ids.iter().enumerate() {
            let (step, timestamp, value) = (
                batch.steps[point],
                batch.timestamps[point],
                batch.values[point],
            );
            match &mut self.summaries[id as usize] {
                Some(summary) => summary.add_point(step, timestamp, value),
                slot @ None => *slot = Some(KeySummary::of_point(step, timestamp, value)),
            }
        }
        self.active.append(
            lsn,
            &key_ids,
            &batch.steps,
            &batch.timestamps,
            &batch.values,
        );
    }

    /// Every key's summary, in key order.
    pub(crate) fn summaries(&self) -> Vec<(String, KeySummary)> {
        let mut all: Vec<(String, KeySummary)> = self
            .key_names
            .iter()
            .zip(&self.summaries)
            .filter_map(|(key, summary)| summary.map(|summary| (key.clone(), summary)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The oldest LSN of a record not yet persisted to a file.
    pub(crate) fn min_unpersisted_lsn(&self) -> Option<Lsn> {
        self.frozen
            .iter()
            .map(|chunk| chunk.lsn_range().0)
            .chain(self.active.first_lsn())
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
        SeriesSources {
            files: self.files.clone(),
            frozen: if key_id.is_some() {
                self.frozen.clone()
            } else {
                Vec::new()
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
            files: self.files.clone(),
            frozen: self.frozen.clone(),
            active,
        }
    }

    /// Adds a persisted file, keeping sequence order.
    pub(crate) fn add_file(&mut self, file: Arc<PersistedFile>) {
        let position = self
            .files
            .partition_point(|existing| existing.seq() < file.seq());
        self.files.insert(position, file);
    }
}
