//! One key's series of a run, as parallel step, timestamp and value columns
//! in `(step, timestamp)` order, and the ordering helper shared by buffers,
//! files and compaction.

/// A metric series: points in `(step, timestamp)` order; points with equal
/// step and timestamp stay in the order they were logged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricSeries {
    /// Steps.
    pub steps: Vec<i64>,
    /// Timestamps, ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Values.
    pub values: Vec<f64>,
}

impl MetricSeries {
    /// Number of points.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Appends one point.
    pub fn push(&mut self, step: i64, timestamp: i64, value: f64) {
        self.steps.push(step);
        self.timestamps.push(timestamp);
        self.values.push(value);
    }

    /// Appends every point of `other`.
    pub fn extend(&mut self, other: &MetricSeries) {
        self.steps.extend_from_slice(&other.steps);
        self.timestamps.extend_from_slice(&other.timestamps);
        self.values.extend_from_slice(&other.values);
    }

    /// Drops the points from index `from` on whose step lies outside
    /// `low..=high`, keeping the order of the others.
    pub fn retain_steps_from(&mut self, from: usize, low: i64, high: i64) {
        let mut kept = from;
        for row in from..self.steps.len() {
            if (low..=high).contains(&self.steps[row]) {
                self.steps[kept] = self.steps[row];
                self.timestamps[kept] = self.timestamps[row];
                self.values[kept] = self.values[row];
                kept += 1;
            }
        }
        self.steps.truncate(kept);
        self.timestamps.truncate(kept);
        self.values.truncate(kept);
    }

    /// Restores `(step, timestamp)` order after parts were appended; stable,
    /// so ties keep the order in which the parts were appended.
    pub fn sort_by_step_and_time(&mut self) {
        let Some(order) = order_by_step_and_time(&self.steps, &self.timestamps) else {
            return;
        };
        self.steps = order.iter().map(|&index| self.steps[index]).collect();
        self.timestamps = order.iter().map(|&index| self.timestamps[index]).collect();
        self.values = order.iter().map(|&index| self.values[index]).collect();
    }
}

/// The stable permutation that orders rows by `(step, timestamp)`, or
/// `None` when they already are in order (the common case: trainers log
/// steps in order).
pub fn order_by_step_and_time(steps: &[i64], timestamps: &[i64]) -> Option<Vec<usize>> {
    let sorted = steps
        .windows(2)
        .zip(timestamps.windows(2))
        .all(|(step, time)| (step[0], time[0]) <= (step[1], time[1]));
    if sorted {
        return None;
    }
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_unstable_by_key(|&index| (steps[index], timestamps[index], index));
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorting_is_stable_for_ties() {
        let mut series = MetricSeries::default();
        series.push(2, 0, 1.0);
        series.push(1, 5, 2.0);
        series.push(1, 5, 3.0);
        series.push(1, 4, 4.0);
        series.sort_by_step_and_time();
        assert_eq!(series.steps, vec![1, 1, 1, 2]);
        assert_eq!(series.values, vec![4.0, 2.0, 3.0, 1.0]);
    }

    #[test]
    fn sorted_input_needs_no_permutation() {
        assert!(order_by_step_and_time(&[1, 1, 2], &[0, 1, 0]).is_none());
        assert!(order_by_step_and_time(&[], &[]).is_none());
        assert_eq!(order_by_step_and_time(&[1, 0], &[0, 0]), Some(vec![1, 0]));
    }
}
