//! A batch of metric points of one run, in columnar form: a small key
//! dictionary plus parallel step, timestamp and value columns. This is the
//! unit a request turns into, the WAL stores and the ingester applies.

use std::collections::HashMap;

use serde::Deserialize;

pub mod codec;

use super::validation::{KeyKind, ValidationError, validate_key};

/// Metric points of one run, column by column. Serialised compactly (see
/// [`codec`]): the WAL writes every point through this form.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(try_from = "codec::EncodedBatch")]
pub struct MetricBatch {
    /// The distinct keys of the batch.
    pub keys: Vec<String>,
    /// Per point: index into `keys`.
    pub key_indices: Vec<u32>,
    /// Per point: the step.
    pub steps: Vec<i64>,
    /// Per point: wall time in ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Per point: the value (NaN and infinities allowed).
    pub values: Vec<f64>,
}

impl MetricBatch {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the batch holds no points.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The key of point `index`.
    pub fn key_of(&self, index: usize) -> &str {
        &self.keys[self.key_indices[index] as usize]
    }

    /// Checks that the columns agree in length, every key index is in range,
    /// and every key follows MLflow's rules.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let points = self.steps.len();
        if self.key_indices.len() != points
            || self.timestamps.len() != points
            || self.values.len() != points
        {
            return Err(ValidationError::InvalidField {
                field: "points",
                reason: "key, step, timestamp and value columns differ in length".to_string(),
            });
        }
        for key in &self.keys {
            validate_key(KeyKind::Metric, key)?;
        }
        let key_count = self.keys.len() as u32;
        if self.key_indices.iter().any(|&index| index >= key_count) {
            return Err(ValidationError::InvalidField {
                field: "points",
                reason: "a key index is out of range".to_string(),
            });
        }
        Ok(())
    }

    /// Approximate heap size in bytes (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.keys.iter().map(|key| key.len() + 24).sum::<usize>() + self.len() * (4 + 8 + 8 + 8)
    }
}

/// Builds a [`MetricBatch`] point by point, interning keys.
#[derive(Debug, Default)]
pub struct MetricBatchBuilder {
    batch: MetricBatch,
    key_lookup: HashMap<String, u32>,
}

impl MetricBatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty builder with room for `points` points.
    pub fn with_capacity(points: usize) -> Self {
        let mut builder = Self::default();
        builder.batch.key_indices.reserve(points);
        builder.batch.steps.reserve(points);
        builder.batch.timestamps.reserve(points);
        builder.batch.values.reserve(points);
        builder
    }

    /// A builder that continues an existing batch.
    pub fn from_batch(batch: MetricBatch) -> Self {
        let key_lookup = batch
            .keys
            .iter()
            .enumerate()
            .map(|(index, key)| (key.clone(), index as u32))
            .collect();
        MetricBatchBuilder { batch, key_lookup }
    }

    /// Appends one point.
    pub fn push(&mut self, key: &str, step: i64, timestamp: i64, value: f64) {
        let index = self.intern(key);
        self.push_indexed(index, step, timestamp, value);
    }

    /// Returns the dictionary index of `key`, adding it when new.
    pub fn intern(&mut self, key: &str) -> u32 {
        if let Some(&index) = self.key_lookup.get(key) {
            return index;
        }
        let index = self.batch.keys.len() as u32;
        self.batch.keys.push(key.to_string());
        self.key_lookup.insert(key.to_string(), index);
        index
    }

    /// Appends one point whose key was interned with [`Self::intern`].
    pub fn push_indexed(&mut self, key_index: u32, step: i64, timestamp: i64, value: f64) {
        self.batch.key_indices.push(key_index);
        self.batch.steps.push(step);
        self.batch.timestamps.push(timestamp);
        self.batch.values.push(value);
    }

    /// Number of points so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Makes room for `points` more points.
    pub fn reserve(&mut self, points: usize) {
        self.batch.key_indices.reserve(points);
        self.batch.steps.reserve(points);
        self.batch.timestamps.reserve(points);
        self.batch.values.reserve(points);
    }

    /// Appends whole columns of points whose keys were interned with
    /// [`Self::intern`]: `key_indices` yields one index per point, and
    /// points without a timestamp get `default_timestamp`. Copies slices
    /// whole instead of point by point.
    pub fn append_columns(
        &mut self,
        key_indices: impl IntoIterator<Item = u32>,
        steps: &[i64],
        timestamps: Option<&[i64]>,
        default_timestamp: i64,
        values: &[f64],
    ) {
        let before = self.batch.key_indices.len();
        self.batch.key_indices.extend(key_indices);
        debug_assert_eq!(self.batch.key_indices.len() - before, steps.len());
        self.batch.steps.extend_from_slice(steps);
        match timestamps {
            Some(timestamps) => self.batch.timestamps.extend_from_slice(timestamps),
            None => self
                .batch
                .timestamps
                .resize(self.batch.timestamps.len() + steps.len(), default_timestamp),
        }
        self.batch.values.extend_from_slice(values);
    }

    /// Number of distinct keys so far.
    pub fn key_count(&self) -> usize {
        self.batch.keys.len()
    }

    /// Whether no point was pushed.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The finished batch.
    pub fn finish(self) -> MetricBatch {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_interns_keys() {
        let mut builder = MetricBatchBuilder::new();
        builder.push("loss", 0, 10, 1.0);
        builder.push("acc", 0, 10, 0.5);
        builder.push("loss", 1, 11, f64::NAN);
        let batch = builder.finish();
        assert_eq!(batch.keys, vec!["loss", "acc"]);
        assert_eq!(batch.key_indices, vec![0, 1, 0]);
        assert_eq!(batch.key_of(2), "loss");
        assert!(batch.values[2].is_nan());
        batch.validate().unwrap();
    }

    #[test]
    fn validate_refuses_inconsistent_columns_and_bad_keys() {
        let mut batch = MetricBatchBuilder::new();
        batch.push("ok", 0, 0, 0.0);
        let mut batch = batch.finish();
        batch.values.push(1.0);
        assert!(batch.validate().is_err());

        let mut bad_key = MetricBatchBuilder::new();
        bad_key.push("../x", 0, 0, 0.0);
        assert!(bad_key.finish().validate().is_err());

        let mut bad_index = MetricBatchBuilder::new();
        bad_index.push("ok", 0, 0, 0.0);
        let mut bad_index = bad_index.finish();
        bad_index.key_indices[0] = 5;
        assert!(bad_index.validate().is_err());
    }
}
