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
use crate::model::series::order_by_step_and_time;

/// Points sorted by `(key, step, timestamp)`; ties keep their logged order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SortedColumns {
    /// Distinct keys present, in ascending order.
    pub keys: Vec<String>,
    /// Per row: index into `keys` (non-decreasing).
    pub key_ids: Vec<u32>,
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
        let mut rank = vec![u32::MAX; dictionary.len()];
        let mut starts = vec![0usize; present.len() + 1];
        for (position, &id) in present.iter().enumerate() {
            rank[id as usize] = position as u32;
            starts[position + 1] = starts[position] + counts[id as usize];
        }
        // Counting sort by key: stable, so each key keeps its logged order.
        let mut cursor = starts.clone();
        let mut order = vec![0usize; rows];
        for (row, &id) in key_ids.iter().enumerate() {
            let slot = &mut cursor[rank[id as usize] as usize];
            order[*slot] = row;
            *slot += 1;
        }
        let mut sorted = SortedColumns {
            keys: present
                .iter()
                .map(|&id| dictionary[id as usize].clone())
                .collect(),
            key_ids: Vec::with_capacity(rows),
            steps: Vec::with_capacity(rows),
            timestamps: Vec::with_capacity(rows),
            values: Vec::with_capacity(rows),
        };
        for position in 0..present.len() {
            let segment = &mut order[starts[position]..starts[position + 1]];
            let segment_steps: Vec<i64> = segment.iter().map(|&row| steps[row]).collect();
            let segment_times: Vec<i64> = segment.iter().map(|&row| timestamps[row]).collect();
            if let Some(within) = order_by_step_and_time(&segment_steps, &segment_times) {
                let reordered: Vec<usize> = within.iter().map(|&index| segment[index]).collect();
                segment.copy_from_slice(&reordered);
            }
            sorted
                .key_ids
                .extend(std::iter::repeat_n(position as u32, segment.len()));
        }
        sorted.steps.extend(order.iter().map(|&row| steps[row]));
        sorted
            .timestamps
            .extend(order.iter().map(|&row| timestamps[row]));
        sorted.values.extend(order.iter().map(|&row| values[row]));
        sorted
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
            Some(last) if last == key => self.keys.len() as u32 - 1,
            _ => {
                self.keys.push(key.to_string());
                self.keys.len() as u32 - 1
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

    /// The rows as a record batch in the metric file schema.
    pub fn to_record_batch(&self) -> Result<RecordBatch, ArrowError> {
        let key_values: ArrayRef = Arc::new(StringArray::from_iter_values(self.keys.iter()));
        let key_indices = Int32Array::from_iter_values(self.key_ids.iter().map(|&id| id as i32));
        let keys = DictionaryArray::<Int32Type>::try_new(key_indices, key_values)?;
        RecordBatch::try_new(
            metric_file_schema(),
            vec![
                Arc::new(keys),
                Arc::new(Int64Array::from(self.steps.clone())),
                Arc::new(
                    TimestampMillisecondArray::from(self.timestamps.clone())
                        .with_timezone(super::schema::TIMEZONE),
                ),
                Arc::new(Float64Array::from(self.values.clone())),
            ],
        )
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
        let batch = sorted.to_record_batch().unwrap();
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
