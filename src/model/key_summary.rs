//! Per-key summary of a run's metric series: point count, step range,
//! min/max and the latest point (greatest step, then greatest timestamp,
//! then the one logged last). Kept in memory for every run and key, stored
//! in each Parquet file's footer, and merged as data moves.

use serde::{Deserialize, Serialize};

use super::float_json;

/// Summary of one key's points.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeySummary {
    /// Number of points.
    pub count: u64,
    /// Smallest step.
    pub min_step: i64,
    /// Greatest step.
    pub max_step: i64,
    /// Smallest value, ignoring NaN (NaN if every value is NaN).
    #[serde(with = "float_json")]
    pub min_value: f64,
    /// Greatest value, ignoring NaN (NaN if every value is NaN).
    #[serde(with = "float_json")]
    pub max_value: f64,
    /// Step of the latest point.
    pub latest_step: i64,
    /// Timestamp of the latest point.
    pub latest_timestamp: i64,
    /// Value of the latest point.
    #[serde(with = "float_json")]
    pub latest_value: f64,
}

impl KeySummary {
    /// The summary of a single point.
    pub fn of_point(step: i64, timestamp: i64, value: f64) -> Self {
        KeySummary {
            count: 1,
            min_step: step,
            max_step: step,
            min_value: value,
            max_value: value,
            latest_step: step,
            latest_timestamp: timestamp,
            latest_value: value,
        }
    }

    /// Adds a point logged after every point already summarised.
    #[inline]
    pub fn add_point(&mut self, step: i64, timestamp: i64, value: f64) {
        self.count += 1;
        self.min_step = self.min_step.min(step);
        self.max_step = self.max_step.max(step);
        // f64::min/max ignore NaN unless both are NaN.
        self.min_value = self.min_value.min(value);
        self.max_value = self.max_value.max(value);
        if (step, timestamp) >= (self.latest_step, self.latest_timestamp) {
            self.latest_step = step;
            self.latest_timestamp = timestamp;
            self.latest_value = value;
        }
    }

    /// Folds in the summary of points logged after these ones.
    pub fn merge_newer(&mut self, newer: &KeySummary) {
        self.count += newer.count;
        self.min_step = self.min_step.min(newer.min_step);
        self.max_step = self.max_step.max(newer.max_step);
        self.min_value = self.min_value.min(newer.min_value);
        self.max_value = self.max_value.max(newer.max_value);
        if (newer.latest_step, newer.latest_timestamp) >= (self.latest_step, self.latest_timestamp)
        {
            self.latest_step = newer.latest_step;
            self.latest_timestamp = newer.latest_timestamp;
            self.latest_value = newer.latest_value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_is_greatest_step_then_timestamp_then_last_logged() {
        let mut summary = KeySummary::of_point(5, 100, 1.0);
        summary.add_point(3, 200, 2.0);
        assert_eq!(summary.latest_value, 1.0, "a smaller step is never latest");
        summary.add_point(5, 150, 3.0);
        assert_eq!(summary.latest_value, 3.0, "same step, later timestamp");
        summary.add_point(5, 150, 4.0);
        assert_eq!(summary.latest_value, 4.0, "exact tie: logged last wins");
        assert_eq!(
            (summary.min_step, summary.max_step, summary.count),
            (3, 5, 4)
        );
    }

    #[test]
    fn nan_is_ignored_by_min_and_max_but_can_be_latest() {
        let mut summary = KeySummary::of_point(0, 0, f64::NAN);
        assert!(summary.min_value.is_nan());
        summary.add_point(1, 1, 2.0);
        summary.add_point(2, 2, f64::NAN);
        assert_eq!((summary.min_value, summary.max_value), (2.0, 2.0));
        assert!(summary.latest_value.is_nan());
        summary.add_point(3, 3, f64::NEG_INFINITY);
        assert_eq!(summary.min_value, f64::NEG_INFINITY);
    }

    #[test]
    fn merging_equals_adding_one_by_one() {
        let points = [
            (0, 5, 1.0),
            (4, 6, -1.0),
            (2, 7, 9.0),
            (4, 6, 0.5),
            (1, 9, 3.0),
        ];
        let mut whole = KeySummary::of_point(points[0].0, points[0].1, points[0].2);
        for &(step, time, value) in &points[1..] {
            whole.add_point(step, time, value);
        }
        let mut older = KeySummary::of_point(points[0].0, points[0].1, points[0].2);
        older.add_point(points[1].0, points[1].1, points[1].2);
        let mut newer = KeySummary::of_point(points[2].0, points[2].1, points[2].2);
        for &(step, time, value) in &points[3..] {
            newer.add_point(step, time, value);
        }
        older.merge_newer(&newer);
        assert_eq!(older, whole);
    }

    #[test]
    fn serialises_non_finite_values_in_json() {
        let summary = KeySummary::of_point(1, 2, f64::INFINITY);
        let json = serde_json::to_string(&summary).unwrap();
        assert!(json.contains("\"Infinity\""));
        let back: KeySummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, summary);
    }
}
