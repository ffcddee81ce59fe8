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
//! `relative_time`; from the files' block aggregates where they have
//! them), then a second pass buckets by timestamp.
//!
//! By step without smoothing, a read whose range holds more points than
//! the budget uses the files' block aggregates
//! ([`SeriesSnapshot::plan_step_read`]): blocks inside one bucket are
//! taken whole, undecoded, and only the blocks that cross a bucket edge or
//! the range's edges are decoded. The answer is the full scan's, point for
//! point; if the aggregates turn out not to match a file, the read is done
//! again by the full scan.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use super::downsample::{BlockPoints, Downsampled, Downsampler, Point};
use super::smoothing::Ema;
use super::stream::{PointSink, SeriesSnapshot, StepBounds};
use super::{KeyPattern, ScalarError};
use crate::engine::Engine;
use crate::ingest::rewinds::RewoundPoints;
use crate::model::{KeySummary, RunId};
use crate::storage::{BlockAggregate, BlockPoint};

/// Points per series when the request does not say.
pub const DEFAULT_MAX_POINTS: usize = 1_000;
/// The largest `max_points` accepted (0 asks for every point).
pub const MAX_MAX_POINTS: usize = 100_000;
/// The most runs one query may name.
pub const MAX_RUNS: usize = 1_000;
/// The most series (run and key pairs) one query may return.
pub const MAX_SERIES: usize = 5_000;
/// Most points one answer carries with `max_points=0` (every point), over
/// all of its series.
pub const MAX_EVERY_POINT: usize = 1_000_000;
/// Most key patterns (exact keys or globs) in one query.
pub const MAX_KEY_PATTERNS: usize = 100;
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
    /// Whether the points a rewind hid are read too.
    pub rewound: RewoundPoints,
}

impl Default for SeriesParams {
    fn default() -> Self {
        SeriesParams {
            x: XAxis::Step,
            start: None,
            end: None,
            max_points: DEFAULT_MAX_POINTS,
            smoothing: None,
            rewound: RewoundPoints::Hidden,
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
            let Some((first, last)) = snapshot.timestamp_range()? else {
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
    if params.x == XAxis::Step && params.smoothing.is_none() && params.max_points > 0 {
        match read_planned(snapshot, lo, hi, params.max_points) {
            Ok(Some(result)) => return Ok(series_of(result, params, origin)),
            Ok(None) => {}
            Err(ScalarError::Aggregates(reason)) => {
                tracing::warn!(key = snapshot.key(), %reason, "block aggregates unusable; reading in full");
            }
            Err(error) => return Err(error),
        }
    }
    let result = read_full(snapshot, lo, hi, bounds, params)?;
    Ok(series_of(result, params, origin))
}

/// Streams every point within `bounds` through the smoother into the
/// downsampler.
fn read_full(
    snapshot: &SeriesSnapshot,
    lo: i64,
    hi: i64,
    bounds: StepBounds,
    params: &SeriesParams,
) -> Result<Downsampled, ScalarError> {
    let by_step = params.x == XAxis::Step;
    let mut downsampler = Downsampler::new(lo, hi, params.max_points);
    let mut ema = params.smoothing.map(Ema::new);
    let mut seq = 0u64;
    let every_point = params.max_points == 0;
    snapshot.for_each_slice(bounds, &mut |steps, timestamps, values| {
        if every_point && seq as usize + steps.len() > MAX_EVERY_POINT {
            return Err(ScalarError::TooManyPoints {
                what: "the series' steps in range",
                limit: MAX_EVERY_POINT,
            });
        }
        if by_step && ema.is_none() {
            // Slices come in step order: reduce each bucket's run at once.
            downsampler.push_step_slice(seq, steps, timestamps, values);
            seq += steps.len() as u64;
            return Ok(true);
        }
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
    Ok(downsampler.finish())
}

/// Reads steps `[lo, hi]` with the files' block aggregates; `None` when
/// no file has them.
fn read_planned(
    snapshot: &SeriesSnapshot,
    lo: i64,
    hi: i64,
    max_points: usize,
) -> Result<Option<Downsampled>, ScalarError> {
    let mut downsampler = Downsampler::new(lo, hi, max_points);
    let plan = {
        let grid = &downsampler;
        snapshot.plan_step_read(lo, hi, max_points, &|a, b| grid.same_bucket(a, b))
    };
    let Some(plan) = plan else {
        return Ok(None);
    };
    if plan.summarises() {
        downsampler.start_bucketing();
    }
    let mut sink = StepSink {
        downsampler: &mut downsampler,
        seq: 0,
    };
    plan.run(&mut sink)?;
    Ok(Some(downsampler.finish()))
}

/// Feeds a planned step read into a downsampler, numbering points in the
/// merged order as the full scan does.
struct StepSink<'a> {
    downsampler: &'a mut Downsampler,
    seq: u64,
}

impl StepSink<'_> {
    fn point(&self, point: BlockPoint) -> Point {
        Point {
            seq: self.seq + u64::from(point.offset),
            x: point.step,
            step: point.step,
            timestamp: point.timestamp,
            value: point.value,
            smoothed: point.value,
        }
    }
}

impl PointSink for StepSink<'_> {
    fn slice(
        &mut self,
        steps: &[i64],
        timestamps: &[i64],
        values: &[f64],
    ) -> Result<bool, ScalarError> {
        self.downsampler
            .push_step_slice(self.seq, steps, timestamps, values);
        self.seq += steps.len() as u64;
        Ok(true)
    }

    fn block(&mut self, block: &BlockAggregate) -> Result<bool, ScalarError> {
        let points = BlockPoints {
            rows: u64::from(block.rows),
            non_finite: u64::from(block.non_finite),
            first: self.point(block.first),
            last: self.point(block.last),
            min: block.min.map(|point| self.point(point)),
            max: block.max.map(|point| self.point(point)),
            nan: block.nan.map(|point| self.point(point)),
        };
        if !self.downsampler.push_block(&points) {
            return Err(ScalarError::Aggregates(
                "a summarised block does not fit one bucket".into(),
            ));
        }
        self.seq += u64::from(block.rows);
        Ok(true)
    }
}

/// The response columns of a downsampled series.
fn series_of(result: Downsampled, params: &SeriesParams, origin: i64) -> ScalarSeries {
    let points = &result.points;
    ScalarSeries {
        steps: points.iter().map(|point| point.step).collect(),
        timestamps: points.iter().map(|point| point.timestamp).collect(),
        values: points.iter().map(|point| point.value).collect(),
        smoothed: params
            .smoothing
            .map(|_| points.iter().map(|point| point.smoothed).collect()),
        relative_times: (params.x == XAxis::RelativeTime).then(|| {
            points
                .iter()
                .map(|point| (i128::from(point.timestamp) - i128::from(origin)) as f64 / 1000.0)
                .collect()
        }),
        total_points: result.total,
        downsampled: result.downsampled,
        non_finite_points: result.non_finite,
    }
}

fn empty(params: &SeriesParams) -> ScalarSeries {
    ScalarSeries {
        smoothed: params.smoothing.map(|_| Vec::new()),
        relative_times: (params.x == XAxis::RelativeTime).then(Vec::new),
        ..ScalarSeries::default()
    }
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
    let (sources, summary) = engine.key_sources(run_id, key, params.rewound).await?;
    let key = key.to_string();
    let params = *params;
    tokio::task::spawn_blocking(move || {
        let (files, caps, buffered) = sources.into_shared()?;
        let snapshot = SeriesSnapshot::shared(&key, files, buffered).with_file_caps(caps);
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
    if keys.len() > MAX_KEY_PATTERNS {
        return Err(ScalarError::Invalid(format!(
            "at most {MAX_KEY_PATTERNS} keys or patterns per query, not {}",
            keys.len()
        )));
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
    // With every point asked for, the answer stops growing at the limit
    // (each series is also capped as it is read).
    let points = std::sync::atomic::AtomicUsize::new(0);
    let points = &points;
    futures_util::stream::iter(jobs)
        .map(|(run_id, key)| async move {
            let series = read_series(engine, run_id, &key, params).await?;
            if params.max_points == 0
                && points.fetch_add(series.steps.len(), std::sync::atomic::Ordering::Relaxed)
                    + series.steps.len()
                    > MAX_EVERY_POINT
            {
                return Err(ScalarError::TooManyPoints {
                    what: "the selected series",
                    limit: MAX_EVERY_POINT,
                });
            }
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
    use crate::ingest::BufferedKey;
    use crate::ingest::buffer::ActiveBuffer;
    use crate::model::MetricSeries;
    use crate::storage::{MetricFileWriter, PersistedFile, SortedColumns};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::path::Path;

    /// Writes `points` (key, step, timestamp, value) as metric file `seq`;
    /// `with_aggregates: false` writes a file as stepstore did before block
    /// aggregates (no footer entry, 20,000-row pages).
    fn write_file(
        dir: &Path,
        seq: u64,
        points: &[(String, i64, i64, f64)],
        with_aggregates: bool,
    ) -> Arc<PersistedFile> {
        let columns =
            SortedColumns::from_points(points.iter().map(|p| (p.0.as_str(), p.1, p.2, p.3)));
        let path = dir.join(format!("{seq:08}.parquet"));
        if with_aggregates {
            // Two writes, so keys continue across calls.
            let mut writer = MetricFileWriter::create(&path).unwrap();
            let split = columns.len() / 3;
            let mut head = SortedColumns::default();
            let mut tail = SortedColumns::default();
            for (id, range) in columns.key_ranges() {
                let cut = range.start.max(split.min(range.end));
                for (part, rows) in [(&mut head, range.start..cut), (&mut tail, cut..range.end)] {
                    part.push_key_rows(
                        &columns.keys[id],
                        &columns.steps[rows.clone()],
                        &columns.timestamps[rows.clone()],
                        &columns.values[rows],
                    );
                }
            }
            writer.write(head).unwrap();
            writer.write(tail).unwrap();
            writer.finish(vec![(seq, seq)], vec![]).unwrap();
        } else {
            use crate::storage::file_meta::{FORMAT_VERSION, FileMetadata};
            use crate::storage::schema::metric_file_schema;
            let metadata = FileMetadata {
                format_version: FORMAT_VERSION,
                lsn_ranges: vec![(seq, seq)],
                keys: columns.summaries(),
                compacted_from: Vec::new(),
            };
            let properties = parquet::file::properties::WriterProperties::builder()
                .set_data_page_row_count_limit(20_000)
                .set_max_row_group_row_count(Some(6_000))
                .build();
            let file = std::fs::File::create(&path).unwrap();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(file, metric_file_schema(), Some(properties))
                    .unwrap();
            writer.write(&columns.into_record_batch().unwrap()).unwrap();
            writer.append_key_value_metadata(metadata.to_key_value().unwrap());
            writer.close().unwrap();
        }
        let file = Arc::new(PersistedFile::open(seq, &path).unwrap().0);
        assert_eq!(file.aggregates().is_some(), with_aggregates);
        file
    }

    fn random_value(rng: &mut SmallRng, step: i64) -> f64 {
        match rng.random_range(0..1000) {
            0..10 => f64::NAN,
            10..15 => f64::INFINITY,
            15..20 => f64::NEG_INFINITY,
            20..30 => 1e6 * if rng.random_bool(0.5) { 1.0 } else { -1.0 },
            30..60 => 0.0,
            60..90 => -0.0,
            90..400 => (rng.random_range(-4..4) as f64) * 0.5,
            _ => ((step as f64) * 0.001).sin() + rng.random::<f64>() * 0.1,
        }
    }

    /// `count` points of `key` from `first_step`, mostly one step apart,
    /// with repeated steps and equal timestamps now and then.
    fn random_run(
        rng: &mut SmallRng,
        key: &str,
        first_step: i64,
        count: usize,
    ) -> Vec<(String, i64, i64, f64)> {
        let mut points = Vec::with_capacity(count);
        let mut step = first_step;
        for _ in 0..count {
            let timestamp = 1_000_000 + step * 10 + rng.random_range(0..3);
            points.push((key.to_string(), step, timestamp, random_value(rng, step)));
            if rng.random_range(0..50) != 0 {
                step += rng.random_range(1..3);
            }
        }
        points
    }

    fn comparable(result: &Downsampled) -> Vec<(u64, i64, i64, i64, u64)> {
        result
            .points
            .iter()
            .map(|p| (p.seq, p.x, p.step, p.timestamp, p.value.to_bits()))
            .collect()
    }

    /// A read's step range (the whole `steps` in round 0, else random
    /// within it), its bounds and its parameters.
    fn random_read(
        rng: &mut SmallRng,
        round: usize,
        (min_step, max_step): (i64, i64),
        max_points: usize,
    ) -> (i64, i64, StepBounds, SeriesParams) {
        let (lo, hi) = if round == 0 {
            (min_step, max_step)
        } else {
            let a = rng.random_range(min_step..=max_step);
            let b = rng.random_range(min_step..=max_step);
            (a.min(b), a.max(b))
        };
        let bounds = StepBounds {
            lower: Some(lo),
            upper: Some(hi),
        };
        let params = SeriesParams {
            max_points,
            ..SeriesParams::default()
        };
        (lo, hi, bounds, params)
    }

    #[test]
    fn planned_reads_match_the_full_scan_on_random_series() {
        let mut summarised = 0usize;
        for seed in 0..24u64 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let mut all: Vec<(i64, i64, f64)> = Vec::new();
            let mut files = Vec::new();
            let mut next_step = 0i64;
            for seq in 1..=rng.random_range(1..4u64) {
                // Usually after the previous file's steps; sometimes
                // overlapping them (points logged out of order).
                let first = if rng.random_bool(0.3) {
                    rng.random_range(0..=next_step)
                } else {
                    next_step
                };
                let count = rng.random_range(1..14_000);
                let mut points = random_run(&mut rng, "k", first, count);
                all.extend(points.iter().map(|p| (p.1, p.2, p.3)));
                next_step = next_step.max(points.iter().map(|p| p.1).max().unwrap() + 1);
                for other in ["a", "z"] {
                    let count = rng.random_range(0..3000);
                    points.extend(random_run(&mut rng, other, 0, count));
                }
                let with_aggregates = seed % 5 != 4 || seq != 1;
                files.push(write_file(dir.path(), seq, &points, with_aggregates));
            }
            // Buffered points: in order (usually) or not, interleaved with
            // another key, over frozen chunks and the active buffer.
            let buffer_first = if rng.random_bool(0.5) {
                next_step
            } else {
                rng.random_range(0..=next_step)
            };
            let count = rng.random_range(0..9000);
            let mut logged = random_run(&mut rng, "k", buffer_first, count);
            if rng.random_bool(0.2) {
                logged.extend(random_run(&mut rng, "k", buffer_first / 2, 300));
            }
            let interleave = rng.random_bool(0.5);
            let mut active = ActiveBuffer::default();
            let names = Arc::new(vec!["k".to_string(), "a".to_string()]);
            let mut chunks = Vec::new();
            let mut sorted_copy = MetricSeries::default();
            for (lsn, (_, step, timestamp, value)) in logged.into_iter().enumerate() {
                all.push((step, timestamp, value));
                sorted_copy.push(step, timestamp, value);
                active.append(lsn as u64 + 1, &[0], &[step], &[timestamp], &[value]);
                if interleave && lsn % 3 == 0 {
                    active.append(lsn as u64 + 1, &[1], &[step], &[timestamp], &[-value]);
                }
                if rng.random_range(0..4000) == 0 {
                    chunks.extend(active.freeze(chunks.len() as u64, Arc::clone(&names)));
                }
            }
            let mut tail = MetricSeries::default();
            active.collect_tail_key(0, &mut tail);
            let segments = chunks
                .iter()
                .flat_map(|chunk| chunk.segments().unwrap())
                .chain(active.sealed().iter().cloned())
                .collect();
            let buffered = BufferedKey {
                key_id: 0,
                segments,
                tail,
            };
            let reference = SeriesSnapshot::new("k", files.clone(), sorted_copy);
            let snapshot = SeriesSnapshot::shared("k", files, buffered);
            assert_eq!(snapshot.buffered_points(), reference.buffered_points());
            let min_step = all.iter().map(|p| p.0).min().unwrap();
            let max_step = all.iter().map(|p| p.0).max().unwrap();
            for round in 0..12 {
                let max_points = [4, 5, 8, 17, 64, 100, 1000, 4096, 40_000][rng.random_range(0..9)];
                let (lo, hi, bounds, params) =
                    random_read(&mut rng, round, (min_step, max_step), max_points);
                let full = read_full(&reference, lo, hi, bounds, &params).unwrap();
                let planned = read_planned(&snapshot, lo, hi, max_points)
                    .unwrap()
                    .unwrap();
                let shared_full = read_full(&snapshot, lo, hi, bounds, &params).unwrap();
                assert_eq!(comparable(&shared_full), comparable(&full));
                // A full read of files with aggregates (block by block,
                // through the page reader) gives the points of one without.
                let by_blocks = snapshot.collect_merged(bounds, true);
                let by_row_groups = snapshot.collect_merged(bounds, false);
                assert_eq!(by_blocks.steps, by_row_groups.steps);
                assert_eq!(by_blocks.timestamps, by_row_groups.timestamps);
                assert!(
                    by_blocks
                        .values
                        .iter()
                        .zip(&by_row_groups.values)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
                let context = format!("seed {seed} round {round} [{lo}, {hi}] max {max_points}");
                assert_eq!(comparable(&planned), comparable(&full), "{context}");
                assert_eq!(planned.total, full.total, "{context}");
                assert_eq!(planned.non_finite, full.non_finite, "{context}");
                assert_eq!(planned.downsampled, full.downsampled, "{context}");
                let grid = Downsampler::new(lo, hi, max_points);
                if let Some(plan) =
                    snapshot.plan_step_read(lo, hi, max_points, &|a, b| grid.same_bucket(a, b))
                {
                    summarised += plan.summarised_blocks();
                }
            }
            // The time axes' range comes from the aggregates.
            let first = all.iter().map(|p| p.1).min().unwrap();
            let last = all.iter().map(|p| p.1).max().unwrap();
            assert_eq!(snapshot.timestamp_range().unwrap(), Some((first, last)));
            assert_eq!(reference.timestamp_range().unwrap(), Some((first, last)));
        }
        assert!(
            summarised > 50,
            "the planned reads used aggregates ({summarised} blocks)"
        );
    }

    #[test]
    fn files_capped_by_a_rewind_read_like_their_shown_points_alone() {
        let mut summarised = 0usize;
        for seed in 0..16u64 {
            let mut rng = SmallRng::seed_from_u64(1000 + seed);
            let dir = tempfile::tempdir().unwrap();
            let mut shown = MetricSeries::default();
            let mut files = Vec::new();
            let mut caps = Vec::new();
            let mut next_step = 0i64;
            for seq in 1..=rng.random_range(1..5u64) {
                // Each rewind sends the trainer back before the file's end;
                // it usually goes on from the step after the rewind.
                let first = if rng.random_bool(0.8) {
                    next_step
                } else {
                    rng.random_range(0..=next_step)
                };
                let count = rng.random_range(1..30_000);
                let mut points = random_run(&mut rng, "k", first, count);
                let last = points.iter().map(|p| p.1).max().unwrap();
                let cap = match rng.random_range(0..4) {
                    0 => None,
                    1 => Some(first - 1),
                    _ => Some(rng.random_range(first..=last)),
                };
                for point in &points {
                    if cap.is_none_or(|cap| point.1 <= cap) {
                        shown.push(point.1, point.2, point.3);
                    }
                }
                next_step = next_step.max(cap.unwrap_or(last) + 1);
                let others = rng.random_range(0..2000);
                points.extend(random_run(&mut rng, "z", 0, others));
                files.push(write_file(
                    dir.path(),
                    seq,
                    &points,
                    seed % 4 != 3 || seq != 1,
                ));
                caps.push(cap);
            }
            let buffered_count = rng.random_range(0..3000);
            let buffered = random_run(&mut rng, "k", next_step, buffered_count);
            let mut copy = MetricSeries::default();
            for (_, step, timestamp, value) in &buffered {
                copy.push(*step, *timestamp, *value);
                shown.push(*step, *timestamp, *value);
            }
            shown.sort_by_step_and_time();
            let capped = SeriesSnapshot::new("k", files, copy).with_file_caps(caps);
            let reference = SeriesSnapshot::new("k", Vec::new(), shown.clone());
            if shown.is_empty() {
                assert!(
                    capped
                        .collect_merged(StepBounds::default(), true)
                        .is_empty()
                );
                continue;
            }
            let min_step = *shown.steps.iter().min().unwrap();
            let max_step = *shown.steps.iter().max().unwrap();
            for round in 0..8 {
                let max_points = [4, 8, 17, 100, 1000, 40_000][rng.random_range(0..6)];
                let (lo, hi, bounds, params) =
                    random_read(&mut rng, round, (min_step, max_step), max_points);
                let context = format!("seed {seed} round {round} [{lo}, {hi}] max {max_points}");
                let expected = read_full(&reference, lo, hi, bounds, &params).unwrap();
                let full = read_full(&capped, lo, hi, bounds, &params).unwrap();
                assert_eq!(comparable(&full), comparable(&expected), "{context}");
                if let Some(planned) = read_planned(&capped, lo, hi, max_points).unwrap() {
                    assert_eq!(comparable(&planned), comparable(&expected), "{context}");
                    assert_eq!(planned.total, expected.total, "{context}");
                }
                for with_aggregates in [true, false] {
                    let merged = capped.collect_merged(bounds, with_aggregates);
                    let wanted = reference.collect_merged(bounds, false);
                    assert_eq!(merged.steps, wanted.steps, "{context}");
                    assert_eq!(merged.timestamps, wanted.timestamps, "{context}");
                }
                let grid = Downsampler::new(lo, hi, max_points);
                if let Some(plan) =
                    capped.plan_step_read(lo, hi, max_points, &|a, b| grid.same_bucket(a, b))
                {
                    summarised += plan.summarised_blocks();
                }
            }
            let first = *shown.timestamps.iter().min().unwrap();
            let last = *shown.timestamps.iter().max().unwrap();
            assert_eq!(capped.timestamp_range().unwrap(), Some((first, last)));
        }
        assert!(
            summarised > 20,
            "capped files still summarise whole shown blocks ({summarised})"
        );
    }

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
