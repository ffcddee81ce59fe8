//! Series reads: parameters, the plan for one series (which x range, which
//! step bounds to read, one or two passes) and multi-run, multi-key
//! queries.
//!
//! By step, the x range comes from the key's summary captured with the
//! snapshot (count and step range are exact for it), so one pass suffices:
//! points are streamed in `(step, timestamp)` order through the smoother
//! (from the series' first point when smoothing, so the smoothed values do
//! not change with the zoom; otherwise reading starts at `start`) into the
//! downsampler, and reading stops past `end`. By time, a first pass finds
//! the series' first and last timestamps (the range, and the origin of
//! `relative_time`), then a second pass buckets by timestamp.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use super::downsample::{Downsampler, Point};
use super::smoothing::Ema;
use super::stream::{SeriesSnapshot, StepBounds};
use super::{KeyPattern, ScalarError};
use crate::engine::Engine;
use crate::model::{KeySummary, RunId};

/// Points per series when the request does not say.
pub const DEFAULT_MAX_POINTS: usize = 1_000;
/// The largest `max_points` accepted (0 asks for every point).
pub const MAX_MAX_POINTS: usize = 100_000;
/// The most runs one query may name.
pub const MAX_RUNS: usize = 1_000;
/// The most series (run and key pairs) one query may return.
pub const MAX_SERIES: usize = 5_000;
/// Series read at the same time by one query.
const PARALLEL_READS: usize = 4;

/// What the x axis is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XAxis {
    /// The step.
    #[default]
    Step,
    /// Wall time (ranges in seconds since the epoch).
    WallTime,
    /// Seconds since the series' first point.
    RelativeTime,
}

impl XAxis {
    /// Parses `step`, `wall_time` or `relative_time`.
    pub fn parse(text: &str) -> Result<XAxis, ScalarError> {
        match text {
            "step" => Ok(XAxis::Step),
            "wall_time" => Ok(XAxis::WallTime),
            "relative_time" => Ok(XAxis::RelativeTime),
            other => Err(ScalarError::Invalid(format!(
                "x '{other}' is not one of step, wall_time, relative_time"
            ))),
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::WallTime => "wall_time",
            XAxis::RelativeTime => "relative_time",
        }
    }
}

/// How to read each series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeriesParams {
    /// The x axis.
    pub x: XAxis,
    /// Smallest x wanted (inclusive; steps, or seconds for the time axes).
    pub start: Option<f64>,
    /// Greatest x wanted (inclusive).
    pub end: Option<f64>,
    /// Budget of points per series; 0 returns every point.
    pub max_points: usize,
    /// EMA weight in `[0, 1)`, when smoothing.
    pub smoothing: Option<f64>,
}

impl Default for SeriesParams {
    fn default() -> Self {
        SeriesParams {
            x: XAxis::Step,
            start: None,
            end: None,
            max_points: DEFAULT_MAX_POINTS,
            smoothing: None,
        }
    }
}

impl SeriesParams {
    /// Checks ranges and limits.
    pub fn validate(&self) -> Result<(), ScalarError> {
        for (name, bound) in [("start", self.start), ("end", self.end)] {
            if bound.is_some_and(|value| !value.is_finite()) {
                return Err(ScalarError::Invalid(format!(
                    "{name} must be a finite number"
                )));
            }
        }
        if let (Some(start), Some(end)) = (self.start, self.end)
            && start > end
        {
            return Err(ScalarError::Invalid(format!(
                "start ({start}) is after end ({end})"
            )));
        }
        if self.max_points != 0 && !(4..=MAX_MAX_POINTS).contains(&self.max_points) {
            return Err(ScalarError::Invalid(format!(
                "max_points must be 0 (every point) or between 4 and {MAX_MAX_POINTS}, not {}",
                self.max_points
            )));
        }
        if let Some(weight) = self.smoothing
            && !(0.0..1.0).contains(&weight)
        {
            return Err(ScalarError::Invalid(format!(
                "smoothing must be in [0, 1), not {weight}"
            )));
        }
        Ok(())
    }
}

/// One series as returned: parallel columns in x order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScalarSeries {
    /// Steps.
    pub steps: Vec<i64>,
    /// Timestamps, ms since the epoch.
    pub timestamps: Vec<i64>,
    /// Raw values (NaN and infinities included).
    pub values: Vec<f64>,
    /// Smoothed values, when smoothing was asked for.
    pub smoothed: Option<Vec<f64>>,
    /// Seconds since the series' first point, for `relative_time`.
    pub relative_times: Option<Vec<f64>>,
    /// Points inside the range before downsampling.
    pub total_points: u64,
    /// Whether points were dropped to fit the budget.
    pub downsampled: bool,
    /// NaN or infinite values inside the range.
    pub non_finite_points: u64,
}

/// One series of a multi-run query.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesResult {
    /// The run.
    pub run_id: RunId,
    /// The key.
    pub key: String,
    /// Its points.
    pub series: ScalarSeries,
}

fn ceil_to_i64(value: f64) -> i64 {
    // `as` saturates at the i64 range.
    value.ceil() as i64
}

fn floor_to_i64(value: f64) -> i64 {
    value.floor() as i64
}

/// Reads one series from a snapshot (`summary` is the key's summary taken
/// with it). Blocking.
pub fn read_snapshot(
    snapshot: &SeriesSnapshot,
    summary: Option<&KeySummary>,
    params: &SeriesParams,
) -> Result<ScalarSeries, ScalarError> {
    params.validate()?;
    let Some(summary) = summary else {
        return Ok(empty(params));
    };
    let (lo, hi, bounds, origin) = match params.x {
        XAxis::Step => {
            let lo = params.start.map_or(summary.min_step, |start| {
                ceil_to_i64(start).max(summary.min_step)
            });
            let hi = params.end.map_or(summary.max_step, |end| {
                floor_to_i64(end).min(summary.max_step)
            });
            let bounds = StepBounds {
                lower: params.smoothing.is_none().then_some(lo),
                upper: Some(hi),
            };
            (lo, hi, bounds, 0)
        }
        XAxis::WallTime | XAxis::RelativeTime => {
            let Some((first, last)) = timestamp_range(snapshot)? else {
                return Ok(empty(params));
            };
            let origin = if params.x == XAxis::RelativeTime {
                first
            } else {
                0
            };
            let to_ms = |seconds: f64| seconds * 1000.0 + origin as f64;
            let lo = params
                .start
                .map_or(first, |start| ceil_to_i64(to_ms(start)).max(first));
            let hi = params
                .end
                .map_or(last, |end| floor_to_i64(to_ms(end)).min(last));
            (lo, hi, StepBounds::default(), origin)
        }
    };
    if lo > hi {
        return Ok(empty(params));
    }
    let by_step = params.x == XAxis::Step;
    let mut downsampler = Downsampler::new(lo, hi, params.max_points);
    let mut ema = params.smoothing.map(Ema::new);
    let mut seq = 0u64;
    snapshot.for_each_slice(bounds, &mut |steps, timestamps, values| {
        for ((&step, &timestamp), &value) in steps.iter().zip(timestamps).zip(values) {
            let smoothed = match &mut ema {
                Some(ema) => ema.next(value),
                None => value,
            };
            downsampler.push(Point {
                seq,
                x: if by_step { step } else { timestamp },
                step,
                timestamp,
                value,
                smoothed,
            });
            seq += 1;
        }
        Ok(true)
    })?;
    let result = downsampler.finish();
    let points = &result.points;
    Ok(ScalarSeries {
        steps: points.iter().map(|point| point.step).collect(),
        timestamps: points.iter().map(|point| point.timestamp).collect(),
        values: points.iter().map(|point| point.value).collect(),
        smoothed: params
            .smoothing
            .map(|_| points.iter().map(|point| point.smoothed).collect()),
        relative_times: (params.x == XAxis::RelativeTime).then(|| {
            points
                .iter()
                .map(|point| (point.timestamp - origin) as f64 / 1000.0)
                .collect()
        }),
        total_points: result.total,
        downsampled: result.downsampled,
        non_finite_points: result.non_finite,
    })
}

fn empty(params: &SeriesParams) -> ScalarSeries {
    ScalarSeries {
        smoothed: params.smoothing.map(|_| Vec::new()),
        relative_times: (params.x == XAxis::RelativeTime).then(Vec::new),
        ..ScalarSeries::default()
    }
}

/// The first and last timestamp of the series (first pass for the time
/// axes).
fn timestamp_range(snapshot: &SeriesSnapshot) -> Result<Option<(i64, i64)>, ScalarError> {
    let mut range: Option<(i64, i64)> = None;
    snapshot.for_each_slice(StepBounds::default(), &mut |_, timestamps, _| {
        let (mut low, mut high) = range.unwrap_or((i64::MAX, i64::MIN));
        for &timestamp in timestamps {
            low = low.min(timestamp);
            high = high.max(timestamp);
        }
        range = Some((low, high));
        Ok(true)
    })?;
    Ok(range)
}

/// Reads one series of a run. An unknown run is an error; a key the run
/// does not have is an empty series.
pub async fn read_series(
    engine: &Engine,
    run_id: RunId,
    key: &str,
    params: &SeriesParams,
) -> Result<ScalarSeries, ScalarError> {
    params.validate()?;
    let sources = engine.series_sources(run_id, key).await?;
    let summary = sources.summary();
    let key = key.to_string();
    let params = *params;
    tokio::task::spawn_blocking(move || {
        let (files, buffered) = sources.into_parts();
        let snapshot = SeriesSnapshot::new(&key, files, buffered);
        read_snapshot(&snapshot, summary.as_ref(), &params)
    })
    .await
    .map_err(|error| ScalarError::Task(error.to_string()))?
}

/// The series of every key of every run that a pattern selects, runs in
/// the order given and keys in key order. Unknown runs are an error.
pub async fn query(
    engine: &Arc<Engine>,
    runs: &[RunId],
    keys: &[KeyPattern],
    params: &SeriesParams,
) -> Result<Vec<SeriesResult>, ScalarError> {
    params.validate()?;
    if runs.is_empty() {
        return Err(ScalarError::Invalid("give at least one run".into()));
    }
    if runs.len() > MAX_RUNS {
        return Err(ScalarError::Invalid(format!(
            "at most {MAX_RUNS} runs per query, not {}",
            runs.len()
        )));
    }
    if keys.is_empty() {
        return Err(ScalarError::Invalid(
            "give at least one key (an exact name or a glob such as train/*)".into(),
        ));
    }
    let mut unique: Vec<RunId> = Vec::with_capacity(runs.len());
    for &run_id in runs {
        if !unique.contains(&run_id) {
            engine.run(run_id)?;
            unique.push(run_id);
        }
    }
    let summaries = engine.runs_metric_summaries(&unique).await?;
    let mut jobs: Vec<(RunId, String)> = Vec::new();
    for (&run_id, run_keys) in unique.iter().zip(&summaries) {
        for (key, _) in run_keys {
            if keys.iter().any(|pattern| pattern.matches(key)) {
                jobs.push((run_id, key.clone()));
            }
        }
    }
    if jobs.len() > MAX_SERIES {
        return Err(ScalarError::Invalid(format!(
            "the query selects {} series, more than {MAX_SERIES}; name fewer runs or keys",
            jobs.len()
        )));
    }
    futures_util::stream::iter(jobs)
        .map(|(run_id, key)| async move {
            let series = read_series(engine, run_id, &key, params).await?;
            Ok::<_, ScalarError>(SeriesResult {
                run_id,
                key,
                series,
            })
        })
        .buffered(PARALLEL_READS)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricSeries;

    fn snapshot_of(points: &[(i64, i64, f64)]) -> (SeriesSnapshot, KeySummary) {
        let mut series = MetricSeries::default();
        let mut summary = KeySummary::of_point(points[0].0, points[0].1, points[0].2);
        for (index, &(step, time, value)) in points.iter().enumerate() {
            series.push(step, time, value);
            if index > 0 {
                summary.add_point(step, time, value);
            }
        }
        (SeriesSnapshot::new("k", Vec::new(), series), summary)
    }

    #[test]
    fn smoothing_matches_a_reference_ema_and_ignores_the_zoom() {
        let points: Vec<(i64, i64, f64)> = (0..5000)
            .map(|step| (step, 1_000_000 + step * 10, ((step * 37) % 101) as f64))
            .collect();
        let (snapshot, summary) = snapshot_of(&points);
        let weight = 0.9;
        let mut reference = Vec::new();
        let (mut last, mut count) = (0.0f64, 0i32);
        for &(_, _, value) in &points {
            last = last * weight + (1.0 - weight) * value;
            count += 1;
            reference.push(last / (1.0 - weight.powi(count)));
        }
        let full = read_snapshot(
            &snapshot,
            Some(&summary),
            &SeriesParams {
                max_points: 0,
                smoothing: Some(weight),
                ..SeriesParams::default()
            },
        )
        .unwrap();
        let smoothed = full.smoothed.unwrap();
        assert_eq!(smoothed.len(), 5000);
        for (got, want) in smoothed.iter().zip(&reference) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
        let zoomed = read_snapshot(
            &snapshot,
            Some(&summary),
            &SeriesParams {
                start: Some(4000.0),
                end: Some(4100.0),
                max_points: 0,
                smoothing: Some(weight),
                ..SeriesParams::default()
            },
        )
        .unwrap();
        assert_eq!(zoomed.steps, (4000..=4100).collect::<Vec<_>>());
        let zoomed_smoothed = zoomed.smoothed.unwrap();
        for (index, step) in (4000..=4100).enumerate() {
            assert!((zoomed_smoothed[index] - reference[step]).abs() < 1e-9);
        }
        let downsampled = read_snapshot(
            &snapshot,
            Some(&summary),
            &SeriesParams {
                max_points: 100,
                smoothing: Some(weight),
                ..SeriesParams::default()
            },
        )
        .unwrap();
        assert!(downsampled.downsampled && downsampled.steps.len() <= 100);
        for (step, smoothed) in downsampled.steps.iter().zip(downsampled.smoothed.unwrap()) {
            assert!((smoothed - reference[*step as usize]).abs() < 1e-9);
        }
    }

    #[test]
    fn time_axes_range_and_order_by_timestamp() {
        // Timestamps not in step order: step 2 was logged before step 1.
        let (snapshot, summary) = snapshot_of(&[
            (0, 10_000, 0.0),
            (1, 13_000, 1.0),
            (2, 12_000, 2.0),
            (3, 14_500, 3.0),
        ]);
        let relative = read_snapshot(
            &snapshot,
            Some(&summary),
            &SeriesParams {
                x: XAxis::RelativeTime,
                start: Some(2.0),
                ..SeriesParams::default()
            },
        )
        .unwrap();
        assert_eq!(relative.steps, vec![2, 1, 3]);
        assert_eq!(relative.relative_times.unwrap(), vec![2.0, 3.0, 4.5]);
        let wall = read_snapshot(
            &snapshot,
            Some(&summary),
            &SeriesParams {
                x: XAxis::WallTime,
                end: Some(12.0),
                ..SeriesParams::default()
            },
        )
        .unwrap();
        assert_eq!(wall.steps, vec![0, 2]);
        assert_eq!(wall.total_points, 2);
    }

    #[test]
    fn bad_parameters_are_refused() {
        for params in [
            SeriesParams {
                max_points: 3,
                ..SeriesParams::default()
            },
            SeriesParams {
                smoothing: Some(1.0),
                ..SeriesParams::default()
            },
            SeriesParams {
                start: Some(5.0),
                end: Some(4.0),
                ..SeriesParams::default()
            },
            SeriesParams {
                start: Some(f64::NAN),
                ..SeriesParams::default()
            },
        ] {
            assert!(matches!(params.validate(), Err(ScalarError::Invalid(_))));
        }
        assert!(SeriesParams::default().validate().is_ok());
    }
}
