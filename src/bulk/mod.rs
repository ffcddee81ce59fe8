//! Bulk ingest: many runs and keys in one request, in three encodings
//! (columnar JSON, NDJSON, Arrow IPC stream). Each decoder turns a request
//! into per-run [`MetricBatch`]es, checking every row first and naming the
//! first bad one, so that a request is accepted or refused as a whole.

pub mod arrow_ipc;
pub mod columnar;
pub mod ndjson;

use std::collections::HashMap;

use thiserror::Error;

use crate::error_kind::{Classify, ErrorKind};
use crate::model::validation::{KeyKind, validate_key};
use crate::model::{MetricBatch, MetricBatchBuilder, RunId};

/// The `Content-Type` of columnar JSON requests.
pub const COLUMNAR_JSON: &str = "application/json";
/// The `Content-Type` of NDJSON requests.
pub const NDJSON: &str = "application/x-ndjson";
/// The `Content-Type` of Arrow IPC stream requests.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Why a bulk request was refused. Each names where the problem is.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum BulkError {
    /// The body is not valid in its encoding (broken JSON, bad IPC).
    #[error("{0}")]
    Malformed(String),
    /// A row or field breaks a rule (bad run id, key, missing value, ...).
    #[error("{0}")]
    Invalid(String),
    /// The request holds more points than the server takes at once.
    #[error("the request holds more than {limit} points; split it")]
    TooManyPoints {
        /// The limit.
        limit: usize,
    },
    /// An NDJSON line is longer than a point can be.
    #[error("line {line} is longer than the limit of {limit} bytes for one point")]
    LineTooLong {
        /// The line's number (from 1).
        line: usize,
        /// The limit.
        limit: usize,
    },
}

impl Classify for BulkError {
    fn kind(&self) -> ErrorKind {
        match self {
            BulkError::Malformed(_) => ErrorKind::MalformedRequest,
            BulkError::Invalid(_) => ErrorKind::InvalidParameter,
            BulkError::TooManyPoints { .. } | BulkError::LineTooLong { .. } => ErrorKind::TooLarge,
        }
    }
}

/// Parses a run id, naming where it was found on failure.
pub fn parse_run_id(text: &str, place: impl FnOnce() -> String) -> Result<RunId, BulkError> {
    RunId::parse(text).map_err(|error| BulkError::Invalid(format!("{}: {error}", place())))
}

/// Checks a metric key, naming where it was found on failure.
pub fn check_key(key: &str, place: impl FnOnce() -> String) -> Result<(), BulkError> {
    validate_key(KeyKind::Metric, key)
        .map_err(|error| BulkError::Invalid(format!("{}: {error}", place())))
}

/// Collects points of many runs into one batch per run, in the order runs
/// first appear. Keys are checked once per run and key.
#[derive(Default)]
pub struct RunBatches {
    order: Vec<RunId>,
    builders: HashMap<RunId, MetricBatchBuilder>,
    points: usize,
}

impl RunBatches {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// The builder of `run_id`'s batch.
    pub fn builder(&mut self, run_id: RunId) -> &mut MetricBatchBuilder {
        self.builders.entry(run_id).or_insert_with(|| {
            self.order.push(run_id);
            MetricBatchBuilder::new()
        })
    }

    /// Adds an already built batch of `run_id` (merged if the run appears
    /// again).
    pub fn add_batch(&mut self, run_id: RunId, batch: MetricBatch) {
        self.points += batch.len();
        let builder = self.builder(run_id);
        if builder.is_empty() {
            *builder = MetricBatchBuilder::from_batch(batch);
            return;
        }
        for index in 0..batch.len() {
            let key = builder.intern(batch.key_of(index));
            builder.push_indexed(
                key,
                batch.steps[index],
                batch.timestamps[index],
                batch.values[index],
            );
        }
    }

    /// Counts points added through [`Self::builder`].
    pub fn count(&mut self, points: usize) {
        self.points += points;
    }

    /// Points collected so far.
    pub fn points(&self) -> usize {
        self.points
    }

    /// The batches, one per run, in first-seen order.
    pub fn finish(mut self) -> Vec<(RunId, MetricBatch)> {
        self.order
            .iter()
            .filter_map(|run_id| {
                self.builders
                    .remove(run_id)
                    .map(|builder| (*run_id, builder.finish()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_by_run_in_first_seen_order() {
        let first = RunId::new_random();
        let second = RunId::new_random();
        let mut batches = RunBatches::new();
        batches.builder(second).push("loss", 0, 1, 0.5);
        batches.builder(first).push("loss", 0, 1, 0.25);
        batches.builder(second).push("acc", 1, 2, 0.75);
        batches.count(3);
        let mut extra = MetricBatchBuilder::new();
        extra.push("acc", 2, 3, 1.0);
        batches.add_batch(second, extra.finish());
        assert_eq!(batches.points(), 4);
        let finished = batches.finish();
        assert_eq!(finished.len(), 2);
        assert_eq!(finished[0].0, second);
        assert_eq!(finished[0].1.keys, ["loss", "acc"]);
        assert_eq!(finished[0].1.key_indices, [0, 1, 1]);
        assert_eq!(finished[1].0, first);
    }
}
