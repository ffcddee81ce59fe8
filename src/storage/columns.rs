//! Metric points in file order: sorted by `(key, step, timestamp)`, with a
//! sorted key dictionary, ready to become an Arrow record batch.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::Int32Type;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::schema::metric_file_schema;
use crate::model::KeySummary;

/// Points sorted by `(key, step, timestamp)`; ties keep their logged order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SortedColumns {
    /// Distinct keys present, in ascending order.
    pub keys: Vec<String>,
    /// Per row: index into `keys` (non-decreasing).
    pub key_ids: Vec<i32>,
    /// Per row: step.
    pub steps: Vec<i64>,
    /// Per row: timestamp, ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Per row: value.
    pub values: Vec<f64>,
}

impl SortedColumns {
    /// Sorts rows given in logged order. `dictionary` maps `key_ids` to
    /// names; keys without rows are dropped.
    ///
    /// A counting sort groups rows by key in one pass (stable, so each key
    /// keeps its logged order); a key's rows are sorted by step and time only
    /// when they are not in order already, which trainers rarely cause.
    pub fn from_logged_order(
        dictionary: &[String],
        key_ids: &[u32],
        steps: &[i64],
        timestamps: &[i64],
        values: &[f64],
    ) -> SortedColumns {
        let rows = key_ids.len();
        let mut counts = vec![0usize; dictionary.len()];
        for &id in key_ids {
            counts[id as usize] += 1;
        }
        let mut present: Vec<u32> = (0..dictionary.len() as u32)
            .filter(|&id| counts[id as usize] > 0)
            .collect();
        present.sort_unstable_by(|&a, &b| dictionary[a as usize].cmp(&dictionary[b as usize]));
        let mut cursor = vec![0usize; dictionary.len()];
        let mut starts = Vec::with_capacity(present.len() + 1);
        let mut next_start = 0;
        for &id in &present {
            cursor[id as usize] = next_start;
            starts.push(next_start);
            next_start += counts[id as usize];
        }
        starts.push(next_start);
        let mut order = vec![0u32; rows];
        for (row, &id) in key_ids.iter().enumerate() {
            let slot = &mut cursor[id as usize];
            order[*slot] = row as u32;
            *slot += 1;
        }
        let mut sorted_key_ids = Vec::with_capacity(rows);
        for (position, bounds) in starts.windows(2).enumerate() {
            let segment = &mut order[bounds[0]..bounds[1]];
            let in_order = segment.windows(2).all(|pair| {
                let (a, b) = (pair[0] as usize, pair[1] as usize);
                (steps[a], timestamps[a]) <= (steps[b], timestamps[b])
            });
            if !in_order {
                segment.sort_unstable_by_key(|&row| {
                    (steps[row as usize], timestamps[row as usize], row)
                });
            }
            sorted_key_ids.extend(std::iter::repeat_n(position as i32, segment.len()));
        }
        let mut sorted_steps = Vec::with_capacity(rows);
        let mut sorted_timestamps = Vec::with_capacity(rows);
        let mut sorted_values = Vec::with_capacity(rows);
        for &row in &order {
            let row = row as usize;
            sorted_steps.push(steps[row]);
            sorted_timestamps.push(timestamps[row]);
            sorted_values.push(values[row]);
        }
        SortedColumns {
            keys: present
                .iter()
                .map(|&id| dictionary[id as usize].clone())
                .collect(),
            key_ids: sorted_key_ids,
            steps: sorted_steps,
            timestamps: sorted_timestamps,
            values: sorted_values,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Appends the rows of one key, which must sort after every key already
    /// present; the rows must be in `(step, timestamp)` order.
    pub fn push_key_rows(&mut self, key: &str, steps: &[i64], timestamps: &[i64], values: &[f64]) {
        if steps.is_empty() {
            return;
        }
        let id = match self.keys.last() {
            Some(last) if last == key => self.keys.len() as i32 - 1,
            _ => {
                self.keys.push(key.to_string());
                self.keys.len() as i32 - 1
            }
        };
        self.key_ids.extend(std::iter::repeat_n(id, steps.len()));
        self.steps.extend_from_slice(steps);
        self.timestamps.extend_from_slice(timestamps);
        self.values.extend_from_slice(values);
    }

    /// Row range of every key, in key order.
    pub fn key_ranges(&self) -> Vec<(usize, Range<usize>)> {
        let mut ranges = Vec::with_capacity(self.keys.len());
        let mut start = 0;
        while start < self.key_ids.len() {
            let id = self.key_ids[start];
            let end = start + self.key_ids[start..].partition_point(|&other| other == id);
            ranges.push((id as usize, start..end));
            start = end;
        }
        ranges
    }

    /// Summary of every key, in key order.
    pub fn summaries(&self) -> Vec<(String, KeySummary)> {
        self.key_ranges()
            .into_iter()
            .map(|(id, range)| {
                let mut summary = KeySummary::of_point(
                    self.steps[range.start],
                    self.timestamps[range.start],
                    self.values[range.start],
                );
                for row in range.start + 1..range.end {
                    summary.add_point(self.steps[row], self.timestamps[row], self.values[row]);
                }
                (self.keys[id].clone(), summary)
            })
            .collect()
    }

    /// The rows as a record batch in the metric file schema (no copy).
    pub fn into_record_batch(self) -> Result<RecordBatch, ArrowError> {
        let key_values: ArrayRef = Arc::new(StringArray::from_iter_values(self.keys.iter()));
        let keys =
            DictionaryArray::<Int32Type>::try_new(Int32Array::from(self.key_ids), key_values)?;
        RecordBatch::try_new(
            metric_file_schema(),
            vec![
                Arc::new(keys),
                Arc::new(Int64Array::from(self.steps)),
                Arc::new(
                    TimestampMillisecondArray::from(self.timestamps)
                        .with_timezone(super::schema::TIMEZONE),
                ),
                Arc::new(Float64Array::from(self.values)),
            ],
        )
    }
}

#[cfg(test)]
impl SortedColumns {
    /// Sorts test rows given as `(key, step, timestamp, value)` in logged
    /// order.
    pub(crate) fn from_points<'a>(
        points: impl IntoIterator<Item = (&'a str, i64, i64, f64)>,
    ) -> SortedColumns {
        let points: Vec<(&str, i64, i64, f64)> = points.into_iter().collect();
        let mut dictionary: Vec<String> = points.iter().map(|p| p.0.to_string()).collect();
        dictionary.sort();
        dictionary.dedup();
        let key_ids: Vec<u32> = points
            .iter()
            .map(|p| dictionary.iter().position(|k| k == p.0).unwrap_or(0) as u32)
            .collect();
        let steps: Vec<i64> = points.iter().map(|p| p.1).collect();
        let times: Vec<i64> = points.iter().map(|p| p.2).collect();
        let values: Vec<f64> = points.iter().map(|p| p.3).collect();
        SortedColumns::from_logged_order(&dictionary, &key_ids, &steps, &times, &values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_key_then_step_then_time_keeping_ties_in_order() {
        let dictionary = vec!["loss".to_string(), "acc".to_string(), "unused".to_string()];
        let sorted = SortedColumns::from_logged_order(
            &dictionary,
            &[0, 1, 0, 1, 0],
            &[2, 1, 1, 0, 1],
            &[0, 0, 5, 0, 5],
            &[10.0, 20.0, 30.0, 40.0, 50.0],
        );
        assert_eq!(sorted.keys, vec!["acc", "loss"]);
        assert_eq!(sorted.key_ids, vec![0, 0, 1, 1, 1]);
        assert_eq!(sorted.steps, vec![0, 1, 1, 1, 2]);
        assert_eq!(sorted.values, vec![40.0, 20.0, 30.0, 50.0, 10.0]);
        let summaries = sorted.summaries();
        assert_eq!(summaries[1].0, "loss");
        assert_eq!(summaries[1].1.latest_value, 10.0);
        assert_eq!(summaries[1].1.count, 3);
        let batch = sorted.into_record_batch().unwrap();
        assert_eq!(batch.num_rows(), 5);
    }

    #[test]
    fn key_ranges_cover_every_row() {
        let mut columns = SortedColumns::default();
        columns.push_key_rows("a", &[0, 1], &[0, 0], &[1.0, 2.0]);
        columns.push_key_rows("a", &[2], &[0], &[3.0]);
        columns.push_key_rows("b", &[0], &[0], &[4.0]);
        assert_eq!(columns.keys, vec!["a", "b"]);
        assert_eq!(columns.key_ranges(), vec![(0, 0..3), (1, 3..4)]);
    }
}
