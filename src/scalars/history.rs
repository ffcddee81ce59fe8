//! Every point of one key of a run, page by page, in MLflow's order
//! (timestamp, then step, then value), for `get-history` and
//! `get-history-bulk`.
//!
//! The points stream from [`SeriesSnapshot`] in `(step, timestamp)` order.
//! When that order is also MLflow's (the common case: a trainer's clock
//! moves forward with its steps), a page is read by streaming past the
//! points before it, so memory stays at one decoded batch however long the
//! series is. Only a series whose timestamps go backwards somewhere is
//! loaded whole to be sorted, and then it is one series of one run.

use std::cmp::Ordering;

use super::ScalarError;
use super::stream::{SeriesSnapshot, StepBounds};
use crate::engine::Engine;
use crate::ingest::rewinds::RewoundPoints;
use crate::model::{MetricSeries, RunId};

/// Takes one point (step, timestamp, value) of a page; returns `false` to
/// stop the read (the client went away).
pub type PointVisitor<'a> = dyn FnMut(i64, i64, f64) -> bool + 'a;

/// The points of one key of a run, captured for paged reads.
pub struct History {
    snapshot: SeriesSnapshot,
    len: usize,
}

/// Captures the points of `key` in run `run_id` as of now. An unknown run
/// is an error; a key the run does not have is an empty history.
pub async fn history(engine: &Engine, run_id: RunId, key: &str) -> Result<History, ScalarError> {
    let (sources, summary) = engine
        .key_sources(run_id, key, RewoundPoints::Hidden)
        .await?;
    let len = summary.map_or(0, |summary| summary.count as usize);
    let key = key.to_string();
    tokio::task::spawn_blocking(move || {
        let (files, caps, buffered) = sources.into_shared()?;
        Ok(History {
            snapshot: SeriesSnapshot::shared(&key, files, buffered).with_file_caps(caps),
            len,
        })
    })
    .await
    .map_err(|error| ScalarError::Task(error.to_string()))?
}

/// MLflow's order of metric points: timestamp, then step, then value.
fn mlflow_order(a: (i64, i64, f64), b: (i64, i64, f64)) -> Ordering {
    a.1.cmp(&b.1).then(a.0.cmp(&b.0)).then(a.2.total_cmp(&b.2))
}

impl History {
    /// A history of points already in memory (tests).
    #[cfg(test)]
    fn of(series: MetricSeries) -> History {
        let len = series.len();
        History {
            snapshot: SeriesSnapshot::new("k", Vec::new(), series),
            len,
        }
    }

    /// How many points the history holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the history holds no point.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands `visit` the points at positions `offset..offset + limit` of
    /// the history in MLflow's order. Blocking.
    pub fn page(
        &self,
        offset: usize,
        limit: usize,
        visit: &mut PointVisitor<'_>,
    ) -> Result<(), ScalarError> {
        let end = offset.saturating_add(limit).min(self.len);
        if offset >= end {
            return Ok(());
        }
        if self.streams_in_order()? {
            return self.stream_page(offset, end, visit);
        }
        let series = self.load()?;
        let mut order: Vec<usize> = (0..series.len()).collect();
        let point = |index: usize| {
            (
                series.steps[index],
                series.timestamps[index],
                series.values[index],
            )
        };
        order.sort_by(|&a, &b| mlflow_order(point(a), point(b)));
        for &index in order.iter().take(end).skip(offset) {
            let (step, timestamp, value) = point(index);
            if !visit(step, timestamp, value) {
                break;
            }
        }
        Ok(())
    }

    /// Whether the stream's `(step, timestamp)` order is MLflow's order
    /// too: one pass in bounded memory that stops at the first point out
    /// of place.
    fn streams_in_order(&self) -> Result<bool, ScalarError> {
        let mut previous: Option<(i64, i64, f64)> = None;
        let mut in_order = true;
        self.snapshot
            .for_each_slice(StepBounds::default(), &mut |steps, timestamps, values| {
                for index in 0..steps.len() {
                    let point = (steps[index], timestamps[index], values[index]);
                    if previous.is_some_and(|previous| mlflow_order(previous, point).is_gt()) {
                        in_order = false;
                        return Ok(false);
                    }
                    previous = Some(point);
                }
                Ok(true)
            })?;
        Ok(in_order)
    }

    /// Streams past the first `offset` points and hands on those up to
    /// `end`.
    fn stream_page(
        &self,
        offset: usize,
        end: usize,
        visit: &mut PointVisitor<'_>,
    ) -> Result<(), ScalarError> {
        let mut position = 0usize;
        self.snapshot
            .for_each_slice(StepBounds::default(), &mut |steps, timestamps, values| {
                let slice_end = position + steps.len();
                let from = offset.saturating_sub(position).min(steps.len());
                let to = end.saturating_sub(position).min(steps.len());
                for index in from..to {
                    if !visit(steps[index], timestamps[index], values[index]) {
                        return Ok(false);
                    }
                }
                position = slice_end;
                Ok(position < end)
            })
    }

    /// The whole series, in stream order.
    fn load(&self) -> Result<MetricSeries, ScalarError> {
        let mut series = MetricSeries::default();
        self.snapshot
            .for_each_slice(StepBounds::default(), &mut |steps, timestamps, values| {
                series.steps.extend_from_slice(steps);
                series.timestamps.extend_from_slice(timestamps);
                series.values.extend_from_slice(values);
                Ok(true)
            })?;
        Ok(series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_of(history: &History, offset: usize, limit: usize) -> Vec<(i64, i64, f64)> {
        let mut points = Vec::new();
        history
            .page(offset, limit, &mut |step, timestamp, value| {
                points.push((step, timestamp, value));
                true
            })
            .unwrap();
        points
    }

    #[test]
    fn pages_of_a_series_in_order_stream_in_step_order() {
        let series = MetricSeries {
            steps: (0..10).collect(),
            timestamps: (0..10).map(|step| 1_000 + step).collect(),
            values: (0..10).map(|step| step as f64 / 10.0).collect(),
        };
        let history = History::of(series);
        assert_eq!(history.len(), 10);
        assert!(history.streams_in_order().unwrap());
        let pages: Vec<_> = (0..4).map(|page| page_of(&history, page * 3, 3)).collect();
        assert_eq!(
            pages[0],
            [(0, 1_000, 0.0), (1, 1_001, 0.1), (2, 1_002, 0.2)]
        );
        assert_eq!(pages[3], [(9, 1_009, 0.9)]);
        assert_eq!(pages.iter().map(Vec::len).sum::<usize>(), 10);
        assert!(page_of(&history, 10, 3).is_empty());
        assert!(page_of(&history, usize::MAX, usize::MAX).is_empty());
    }

    #[test]
    fn a_series_whose_clock_goes_back_is_ordered_by_timestamp_then_step_then_value() {
        let series = MetricSeries {
            steps: vec![0, 1, 2, 3, 3],
            timestamps: vec![10, 40, 20, 20, 20],
            values: vec![1.0, 0.5, f64::NAN, 0.7, 0.1],
        };
        let history = History::of(series);
        assert!(!history.streams_in_order().unwrap());
        let all = page_of(&history, 0, 100);
        let order: Vec<(i64, i64)> = all.iter().map(|&(step, time, _)| (step, time)).collect();
        assert_eq!(order, [(0, 10), (2, 20), (3, 20), (3, 20), (1, 40)]);
        assert_eq!(all[2].2, 0.1);
        assert_eq!(all[3].2, 0.7);
        assert_eq!(page_of(&history, 3, 1), [(3, 20, 0.7)]);
    }

    #[test]
    fn a_visitor_that_stops_ends_the_read() {
        let series = MetricSeries {
            steps: (0..100).collect(),
            timestamps: (0..100).collect(),
            values: vec![0.0; 100],
        };
        let history = History::of(series);
        let mut seen = 0;
        history
            .page(0, 100, &mut |_, _, _| {
                seen += 1;
                seen < 5
            })
            .unwrap();
        assert_eq!(seen, 5);
    }
}
