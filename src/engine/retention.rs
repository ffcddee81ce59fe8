//! `stepstore gc` in the engine: removes for good the runs and experiments
//! deleted before a cutoff (see [`crate::catalog::retention`]), their
//! catalog entries through one WAL record, then their buffers and files
//! (each run's shard forgets it; a file goes once no reader holds it).
//! Metric files of runs the catalog does not know (left by a gc the server
//! stopped in the middle of) go too. A dry run only reports what would
//! go.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::{Engine, EngineError};
use crate::catalog::retention::Purge;
use crate::model::{ExperimentId, RunId, now_millis};

/// What a gc removed, or would remove.
#[derive(Clone, Debug, Serialize)]
pub struct GcReport {
    /// Whether nothing was removed (only reported).
    pub dry_run: bool,
    /// Runs deleted before this time (ms since the epoch) qualify.
    pub cutoff: i64,
    /// The runs.
    pub runs: Vec<PurgedRun>,
    /// The experiments.
    pub experiments: Vec<PurgedExperiment>,
    /// Metric files of the runs.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// A run a gc removes.
#[derive(Clone, Debug, Serialize)]
pub struct PurgedRun {
    /// The run.
    pub run_id: String,
    /// Its experiment.
    pub experiment_id: String,
    /// Its name.
    pub run_name: String,
    /// When it was deleted, ms since the epoch (`None`: before deletion
    /// times were kept, or unknown to the catalog).
    pub deleted_time: Option<i64>,
    /// `false` for files of a run the catalog does not know.
    pub in_catalog: bool,
}

/// An experiment a gc removes.
#[derive(Clone, Debug, Serialize)]
pub struct PurgedExperiment {
    /// The experiment.
    pub experiment_id: String,
    /// Its name.
    pub name: String,
}

impl Engine {
    /// Removes (or with `dry_run`, lists) the runs and experiments deleted
    /// more than `older_than` ago.
    pub async fn gc(&self, older_than: Duration, dry_run: bool) -> Result<GcReport, EngineError> {
        let age = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_millis().saturating_sub(age);
        let planned = self.catalog.read().purgeable(cutoff);
        let unknown = self.runs_without_catalog_entry().await?;
        let mut report = self.describe(&planned, &unknown, cutoff, dry_run).await?;
        if dry_run || (planned.is_empty() && unknown.is_empty()) {
            return Ok(report);
        }
        self.ensure_accepting()?;
        for &(run_id, _) in &unknown {
            self.ingester.purge(run_id);
        }
        let (purged, ticket) = self.catalog.purge(&self.log(), cutoff)?;
        self.wait_durable(ticket).await?;
        // The WAL record is durable: the shards forget the runs (after
        // every earlier record of theirs, which they got first).
        for &run_id in &purged.runs {
            self.ingester.purge(run_id);
        }
        self.runs_purged.fetch_add(
            (purged.runs.len() + unknown.len()) as u64,
            Ordering::Relaxed,
        );
        report.dry_run = false;
        if purged != planned {
            // Changed between the plan and the record (a run restored
            // meanwhile): report what went.
            let runs: HashSet<String> = purged.runs.iter().map(ToString::to_string).collect();
            report
                .runs
                .retain(|run| !run.in_catalog || runs.contains(&run.run_id));
            let experiments: HashSet<String> =
                purged.experiments.iter().map(ToString::to_string).collect();
            report
                .experiments
                .retain(|experiment| experiments.contains(&experiment.experiment_id));
        }
        tracing::info!(
            runs = purged.runs.len(),
            experiments = purged.experiments.len(),
            files = report.files,
            bytes = report.bytes,
            "gc removed deleted runs and experiments"
        );
        Ok(report)
    }

    /// Runs whose metric files the shards hold but the catalog does not
    /// know.
    async fn runs_without_catalog_entry(&self) -> Result<Vec<(RunId, ExperimentId)>, EngineError> {
        let views = self.ingester.summaries_snapshot(None).await?;
        let state = self.catalog.read();
        Ok(views
            .into_iter()
            .filter(|view| state.run(view.run_id).is_none())
            .map(|view| (view.run_id, view.experiment_id))
            .collect())
    }

    /// The report of `purge` and of the runs without a catalog entry
    /// (taken before they go).
    async fn describe(
        &self,
        purge: &Purge,
        unknown: &[(RunId, ExperimentId)],
        cutoff: i64,
        dry_run: bool,
    ) -> Result<GcReport, EngineError> {
        let (runs, experiments) = {
            let state = self.catalog.read();
            let mut runs: Vec<PurgedRun> = purge
                .runs
                .iter()
                .map(|&run_id| match state.run(run_id) {
                    Some(run) => PurgedRun {
                        run_id: run_id.to_string(),
                        experiment_id: run.experiment_id.to_string(),
                        run_name: run.run_name.clone(),
                        deleted_time: run.deleted_time,
                        in_catalog: true,
                    },
                    None => PurgedRun {
                        run_id: run_id.to_string(),
                        experiment_id: String::new(),
                        run_name: String::new(),
                        deleted_time: None,
                        in_catalog: true,
                    },
                })
                .collect();
            runs.extend(unknown.iter().map(|(run_id, experiment_id)| PurgedRun {
                run_id: run_id.to_string(),
                experiment_id: experiment_id.to_string(),
                run_name: String::new(),
                deleted_time: None,
                in_catalog: false,
            }));
            let experiments = purge
                .experiments
                .iter()
                .map(|&experiment_id: &ExperimentId| PurgedExperiment {
                    experiment_id: experiment_id.to_string(),
                    name: state
                        .experiment(experiment_id)
                        .map(|experiment| experiment.name.clone())
                        .unwrap_or_default(),
                })
                .collect();
            (runs, experiments)
        };
        let selection: HashSet<RunId> = purge
            .runs
            .iter()
            .copied()
            .chain(unknown.iter().map(|(run_id, _)| *run_id))
            .collect();
        let (files, bytes) = if selection.is_empty() {
            (0, 0)
        } else {
            let points = self
                .ingester
                .points_snapshot(Some(Arc::new(selection)))
                .await?;
            let files = points.iter().map(|run| run.files.len()).sum();
            let bytes = points
                .iter()
                .flat_map(|run| run.files.iter())
                .map(|file| file.bytes())
                .sum();
            (files, bytes)
        };
        Ok(GcReport {
            dry_run,
            cutoff,
            runs,
            experiments,
            files,
            bytes,
        })
    }
}
