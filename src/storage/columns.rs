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

/// Rows in logged order, column by column (one segment of a buffer).
#[derive(Clone, Copy, Debug)]
pub struct LoggedRows<'a> {
    /// Per row: index into the run's key dictionary.
    pub key_ids: &'a [u32],
    /// Per row: step.
    pub steps: &'a [i64],
    /// Per row: timestamp, ms since the epoch.
    pub timestamps: &'a [i64],
    /// Per row: value.
    pub values: &'a [f64],
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
        Self::from_logged_segments(
            dictionary,
            &[LoggedRows {
                key_ids,
                steps,
                timestamps,
                values,
            }],
        )
    }

    /// Sorts rows given in logged order, split over `segments` (read in
    /// turn, never concatenated first).
    ///
    /// A counting sort scatters each row straight to its key's place in one
    /// sequential pass over the input (stable, so each key keeps its logged
    /// order; the writes go to one cursor per key and column, which stay in
    /// cache). A key's rows are sorted by step and time afterwards only when
    /// they are not in order already, which trainers rarely cause.
    pub fn from_logged_segments(
        dictionary: &[String],
        segments: &[LoggedRows<'_>],
    ) -> SortedColumns {
        let mut counts = vec![0usize; dictionary.len()];
        for segment in segments {
            for &id in segment.key_ids {
                counts[id as usize] += 1;
            }
        }
        let rows: usize = counts.iter().sum();
        let mut present: Vec<u32> = (0..dictionary.len() as u32)
            .filter(|&id| counts[id as usize] > 0)
            .collect();
        present.sort_unstable_by(|&a, &b| dictionary[a as usize].cmp(&dictionary[b as usize]));
        let mut cursor = vec![0usize; dictionary.len()];
        let mut starts = Vec::with_capacity(present.len() + 1);
        let mut key_ids = Vec::with_capacity(rows);
        for (position, &id) in present.iter().enumerate() {
            cursor[id as usize] = key_ids.len();
            starts.push(key_ids.len());
            key_ids.extend(std::iter::repeat_n(position as i32, counts[id as usize]));
        }
        starts.push(rows);

        let mut steps = vec![0i64; rows];
        let mut timestamps = vec![0i64; rows];
        let mut values = vec![0f64; rows];
        for segment in segments {
            for (row, &id) in segment.key_ids.iter().enumerate() {
                let slot = &mut cursor[id as usize];
                steps[*slot] = segment.steps[row];
                timestamps[*slot] = segment.timestamps[row];
                values[*slot] = segment.values[row];
                *slot += 1;
            }
        }
        for bounds in starts.windows(2) {
            let range = bounds[0]..bounds[1];
            sort_rows_if_needed(
                &mut steps[range.clone()],
                &mut timestamps[range.clone()],
                &mut values[range],
            );
        }
        SortedColumns {
            keys: present
                .iter()
                .map(|&id| dictionary[id as usize].clone())
                .collect(),
            key_ids,
            steps,
            timestamps,
            values,
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

/// Sorts one key's rows by `(step, timestamp)`, keeping ties in their
/// given order, unless they are in that order already.
fn sort_rows_if_needed(steps: &mut [i64], timestamps: &mut [i64], values: &mut [f64]) {
    let in_order = steps
        .windows(2)
        .zip(timestamps.windows(2))
        .all(|(step, time)| (step[0], time[0]) <= (step[1], time[1]));
    if in_order {
        return;
    }
    let mut rows: Vec<(i64, i64, f64)> = steps
        .iter()
        .zip(timestamps.iter())
        .zip(values.iter())
        .map(|((&step, &time), &value)| (step, time, value))
        .collect();
    rows.sort_by_key(|&(step, time, _)| (step, time));
    for (row, (step, time, value)) in rows.into_iter().enumerate() {
        steps[row] = step;
        timestamps[row] = time;
        values[row] = value;
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
    fn segments_sort_like_one_stable_sort_of_all_rows() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let dictionary: Vec<String> = ["d", "b", "a", "c", "unused"]
            .iter()
            .map(|key| key.to_string())
            .collect();
        for _ in 0..50 {
            let rows = rng.random_range(0..400);
            let key_ids: Vec<u32> = (0..rows).map(|_| rng.random_range(0..4)).collect();
            // Mostly increasing steps with repeats and a few out of order.
            let steps: Vec<i64> = (0..rows as i64)
                .map(|row| row / 3 - if rng.random_bool(0.05) { 50 } else { 0 })
                .collect();
            let timestamps: Vec<i64> = (0..rows).map(|_| rng.random_range(0..3)).collect();
            let values: Vec<f64> = (0..rows).map(|row| row as f64).collect();
            let mut cuts: Vec<usize> = (0..3).map(|_| rng.random_range(0..=rows)).collect();
            cuts.extend([0, rows]);
            cuts.sort_unstable();
            let segments: Vec<LoggedRows<'_>> = cuts
                .windows(2)
                .map(|cut| LoggedRows {
                    key_ids: &key_ids[cut[0]..cut[1]],
                    steps: &steps[cut[0]..cut[1]],
                    timestamps: &timestamps[cut[0]..cut[1]],
                    values: &values[cut[0]..cut[1]],
                })
                .collect();
            let sorted = SortedColumns::from_logged_segments(&dictionary, &segments);

            let mut expected: Vec<usize> = (0..rows).collect();
            expected.sort_by_key(|&row| {
                (
                    dictionary[key_ids[row] as usize].clone(),
                    steps[row],
                    timestamps[row],
                )
            });
            let names: Vec<&str> = sorted
                .key_ids
                .iter()
                .map(|&id| sorted.keys[id as usize].as_str())
                .collect();
            let expected_names: Vec<&str> = expected
                .iter()
                .map(|&row| dictionary[key_ids[row] as usize].as_str())
                .collect();
            assert_eq!(names, expected_names);
            let expected_values: Vec<f64> = expected.iter().map(|&row| values[row]).collect();
            assert_eq!(sorted.values, expected_values);
            let expected_steps: Vec<i64> = expected.iter().map(|&row| steps[row]).collect();
            assert_eq!(sorted.steps, expected_steps);
            assert!(sorted.keys.windows(2).all(|pair| pair[0] < pair[1]));
        }
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
