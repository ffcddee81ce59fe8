//! Bounded-size downsampling that keeps spikes.
//!
//! The x range `[lo, hi]` (inclusive, in steps or milliseconds) is split
//! into `max_points / 4` buckets of equal width: point `x` falls in bucket
//! `floor((x - lo) * buckets / (hi - lo + 1))`, so the first bucket starts
//! exactly at `lo` and the last one ends exactly at `hi`. Each bucket keeps
//! its first and last point (in x order, ties in series order), the point
//! with the smallest and the one with the greatest value (NaN ignored), and,
//! when the bucket holds a NaN that none of those four is, its first NaN
//! point. So every spike and dip survives, NaN and infinities are never
//! dropped silently, and the output holds at most `max_points` points, or
//! `1.25 * max_points` when buckets hold NaN.
//!
//! Points may arrive in any x order (the time axes need not follow the
//! step order); memory is bounded by the budget, not by the series length:
//! points are kept exactly while there are at most `max_points` of them,
//! and bucketed from the first point past that.
//!
//! A block of consecutive points that lies wholly inside one bucket can be
//! given as the points a bucket would keep of it ([`BlockPoints`]); the
//! result is the same as pushing its points one by one.

/// One point of a series as the downsampler sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Position in the series' `(step, timestamp)` order (breaks x ties).
    pub seq: u64,
    /// The x value (step, or timestamp in ms).
    pub x: i64,
    /// The step.
    pub step: i64,
    /// The timestamp, ms since the epoch.
    pub timestamp: i64,
    /// The raw value.
    pub value: f64,
    /// The smoothed value (equal to `value` when not smoothing).
    pub smoothed: f64,
}

impl Point {
    fn order(&self) -> (i64, u64) {
        (self.x, self.seq)
    }
}

/// What a bucket keeps of a block of consecutive points (in push order)
/// that lies inside it: its first and last point in x order, the first
/// points (in push order) with the smallest and greatest value (NaN
/// ignored), its first NaN point in x order, and its counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockPoints {
    /// Points in the block.
    pub rows: u64,
    /// NaN or infinite values in the block.
    pub non_finite: u64,
    /// The smallest point in `(x, seq)` order.
    pub first: Point,
    /// The greatest point in `(x, seq)` order.
    pub last: Point,
    /// The first point with the smallest value.
    pub min: Option<Point>,
    /// The first point with the greatest value.
    pub max: Option<Point>,
    /// The smallest NaN point in `(x, seq)` order.
    pub nan: Option<Point>,
}

/// The points one bucket keeps.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    first: Option<Point>,
    last: Option<Point>,
    min: Option<Point>,
    max: Option<Point>,
    nan: Option<Point>,
}

impl Bucket {
    #[inline]
    fn add(&mut self, point: Point) {
        match &mut self.first {
            Some(first) if point.order() >= first.order() => {}
            slot => *slot = Some(point),
        }
        match &mut self.last {
            Some(last) if point.order() <= last.order() => {}
            slot => *slot = Some(point),
        }
        if point.value.is_nan() {
            match &mut self.nan {
                Some(nan) if point.order() >= nan.order() => {}
                slot => *slot = Some(point),
            }
        } else {
            match &mut self.min {
                Some(min) if point.value >= min.value => {}
                slot => *slot = Some(point),
            }
            match &mut self.max {
                Some(max) if point.value <= max.value => {}
                slot => *slot = Some(point),
            }
        }
    }

    /// The same as adding every point of `block` (which follows every
    /// point added so far) in push order.
    fn add_block(&mut self, block: &BlockPoints) {
        match &mut self.first {
            Some(first) if block.first.order() >= first.order() => {}
            slot => *slot = Some(block.first),
        }
        match &mut self.last {
            Some(last) if block.last.order() <= last.order() => {}
            slot => *slot = Some(block.last),
        }
        if let Some(point) = block.nan {
            match &mut self.nan {
                Some(nan) if point.order() >= nan.order() => {}
                slot => *slot = Some(point),
            }
        }
        if let Some(point) = block.min {
            match &mut self.min {
                Some(min) if point.value >= min.value => {}
                slot => *slot = Some(point),
            }
        }
        if let Some(point) = block.max {
            match &mut self.max {
                Some(max) if point.value <= max.value => {}
                slot => *slot = Some(point),
            }
        }
    }

    /// The kept points, in x order, without repeats.
    fn drain_into(&self, out: &mut Vec<Point>) {
        let mut kept: Vec<Point> = [self.first, self.min, self.max, self.last]
            .into_iter()
            .flatten()
            .collect();
        if !kept.iter().any(|point| point.value.is_nan())
            && let Some(nan) = self.nan
        {
            kept.push(nan);
        }
        kept.sort_by_key(Point::order);
        kept.dedup_by_key(|point| point.seq);
        out.extend(kept);
    }
}

/// What a downsampled series came to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Downsampled {
    /// The points kept, in x order (ties in series order).
    pub points: Vec<Point>,
    /// Points inside the range.
    pub total: u64,
    /// Whether points were dropped (the series was longer than the budget).
    pub downsampled: bool,
    /// NaN or infinite values inside the range.
    pub non_finite: u64,
}

/// Takes the points of one series and keeps a bounded, spike-preserving
/// subset.
#[derive(Debug)]
pub struct Downsampler {
    lo: i64,
    hi: i64,
    width: u128,
    max_points: usize,
    bucket_count: usize,
    exact: Vec<Point>,
    buckets: Vec<Bucket>,
    overflowed: bool,
    total: u64,
    non_finite: u64,
    /// The bucket last hit and its x range `[start, end)`.
    cached: (usize, i64, i64),
}

impl Downsampler {
    /// A downsampler for x in `[lo, hi]` keeping at most `max_points`
    /// (0: keep everything; otherwise at least 4).
    pub fn new(lo: i64, hi: i64, max_points: usize) -> Self {
        let width = if hi >= lo {
            (hi as i128 - lo as i128) as u128 + 1
        } else {
            0
        };
        Downsampler {
            lo,
            hi,
            width,
            max_points,
            bucket_count: (max_points / 4).max(1),
            exact: Vec::new(),
            buckets: Vec::new(),
            overflowed: false,
            total: 0,
            non_finite: 0,
            cached: (0, 0, 0),
        }
    }

    /// Whether `x` is inside the range.
    #[inline]
    pub fn contains(&self, x: i64) -> bool {
        self.lo <= x && x <= self.hi
    }

    /// Takes one point; points outside the range are ignored.
    #[inline]
    pub fn push(&mut self, point: Point) {
        if !self.contains(point.x) {
            return;
        }
        self.total += 1;
        if !point.value.is_finite() {
            self.non_finite += 1;
        }
        if self.overflowed {
            self.add_to_bucket(point);
            return;
        }
        self.exact.push(point);
        if self.max_points > 0 && self.exact.len() > self.max_points {
            self.overflowed = true;
            self.buckets = vec![Bucket::default(); self.bucket_count];
            for point in std::mem::take(&mut self.exact) {
                self.add_to_bucket(point);
            }
        }
    }

    /// Switches to bucketing now (what the first point past the budget
    /// would do), for a reader that knows the range holds more points than
    /// the budget. Nothing changes when keeping every point.
    pub fn start_bucketing(&mut self) {
        if self.overflowed || self.max_points == 0 {
            return;
        }
        self.overflowed = true;
        self.buckets = vec![Bucket::default(); self.bucket_count];
        for point in std::mem::take(&mut self.exact) {
            self.add_to_bucket(point);
        }
    }

    /// Whether x values `a` and `b` are both in the range and in one bucket.
    pub fn same_bucket(&self, a: i64, b: i64) -> bool {
        self.contains(a) && self.contains(b) && self.bucket_of(a).0 == self.bucket_of(b).0
    }

    /// Takes a block of consecutive points (following every point pushed
    /// so far) that lies inside one bucket, as if each point were pushed.
    /// Returns `false`, changing nothing, when the downsampler is not
    /// bucketing or the block is not inside one bucket.
    pub fn push_block(&mut self, block: &BlockPoints) -> bool {
        let (low, high) = (block.first.x, block.last.x);
        if !self.overflowed || !self.same_bucket(low, high) {
            return false;
        }
        for point in [block.min, block.max, block.nan].iter().flatten() {
            if point.x < low || point.x > high {
                return false;
            }
        }
        let index = self.bucket_of(low).0;
        let Some(bucket) = self.buckets.get_mut(index) else {
            return false;
        };
        bucket.add_block(block);
        self.total += block.rows;
        self.non_finite += block.non_finite;
        true
    }

    /// The index of the bucket holding `x`, and the bucket's x range.
    fn bucket_of(&self, x: i64) -> (usize, i64, i64) {
        let buckets = self.bucket_count as u128;
        let offset = (x as i128 - self.lo as i128) as u128;
        let index = (offset * buckets / self.width) as usize;
        let edge = |bucket: u128| -> i64 {
            // lo + ceil(bucket * width / buckets)
            let offset = (bucket * self.width).div_ceil(buckets);
            (self.lo as i128 + offset as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
        };
        let end = if index as u128 + 1 >= buckets {
            i64::MAX
        } else {
            edge(index as u128 + 1)
        };
        (index, edge(index as u128), end)
    }

    /// Takes consecutive points by step, unsmoothed, already in x order
    /// (`steps` nondecreasing; the merged read's order): the same as
    /// pushing each point with `x = step`, numbered from `seq`. Once
    /// bucketing, each bucket's run of points is reduced by scanning the
    /// value column for its first smallest, first greatest and first NaN
    /// value; only those points, and the run's first and last, reach the
    /// bucket.
    pub fn push_step_slice(&mut self, seq: u64, steps: &[i64], timestamps: &[i64], values: &[f64]) {
        let point = |index: usize| Point {
            seq: seq + index as u64,
            x: steps[index],
            step: steps[index],
            timestamp: timestamps[index],
            value: values[index],
            smoothed: values[index],
        };
        // In x order, the points inside the range are one stretch.
        let begin = steps.partition_point(|&step| step < self.lo);
        let end = steps.partition_point(|&step| step <= self.hi);
        let mut index = begin;
        while index < end && !self.overflowed {
            self.push(point(index));
            index += 1;
        }
        while index < end {
            let (bucket, _, bucket_end) = self.bucket_of(steps[index]);
            // At least the point itself (a slice out of order must not
            // stall the loop).
            let run_end = (index + steps[index..end].partition_point(|&step| step < bucket_end))
                .max(index + 1);
            let run = &values[index..run_end];
            // Simple passes the compiler keeps branch-free: the smallest
            // and greatest values (NaN ignored, as `f64::min` / `max` do),
            // then the first point holding each.
            let smallest = run.iter().fold(f64::INFINITY, |a, &value| a.min(value));
            let greatest = run.iter().fold(f64::NEG_INFINITY, |a, &value| a.max(value));
            let min = run.iter().position(|&value| value == smallest);
            let max = run.iter().position(|&value| value == greatest);
            let non_finite = run.iter().filter(|value| !value.is_finite()).count() as u64;
            let nan = if non_finite > 0 {
                run.iter().position(|value| value.is_nan())
            } else {
                None
            };
            let mut kept = [Some(0), min, max, nan, Some(run.len() - 1)];
            kept.sort_unstable();
            if let Some(target) = self.buckets.get_mut(bucket) {
                let mut previous = None;
                for offset in kept.into_iter().flatten() {
                    if previous != Some(offset) {
                        target.add(point(index + offset));
                        previous = Some(offset);
                    }
                }
            }
            self.total += run.len() as u64;
            self.non_finite += non_finite;
            index = run_end;
        }
    }

    #[inline]
    fn add_to_bucket(&mut self, point: Point) {
        let (index, start, end) = self.cached;
        let index = if start <= point.x && point.x < end && !self.buckets.is_empty() {
            index
        } else {
            self.cached = self.bucket_of(point.x);
            self.cached.0
        };
        if let Some(bucket) = self.buckets.get_mut(index) {
            bucket.add(point);
        }
    }

    /// The kept points.
    pub fn finish(mut self) -> Downsampled {
        let points = if self.overflowed {
            let mut points = Vec::with_capacity(self.max_points + self.max_points / 4);
            for bucket in &self.buckets {
                bucket.drain_into(&mut points);
            }
            points
        } else {
            self.exact.sort_by_key(Point::order);
            self.exact
        };
        Downsampled {
            points,
            total: self.total,
            downsampled: self.overflowed,
            non_finite: self.non_finite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seq: u64, x: i64, value: f64) -> Point {
        Point {
            seq,
            x,
            step: x,
            timestamp: x,
            value,
            smoothed: value,
        }
    }

    fn run(
        lo: i64,
        hi: i64,
        max_points: usize,
        points: impl Iterator<Item = Point>,
    ) -> Downsampled {
        let mut downsampler = Downsampler::new(lo, hi, max_points);
        for point in points {
            downsampler.push(point);
        }
        downsampler.finish()
    }

    #[test]
    fn a_single_spike_among_a_million_points_survives_every_budget() {
        let n = 1_000_000i64;
        let value = |x: i64| match x {
            654_321 => 1e9,
            123_457 => -1e9,
            _ => ((x as f64) * 0.001).sin(),
        };
        for max_points in [4, 5, 10, 100, 1000, 4096, 100_000] {
            let result = run(
                0,
                n - 1,
                max_points,
                (0..n).map(|x| point(x as u64, x, value(x))),
            );
            assert!(result.downsampled);
            assert_eq!(result.total, n as u64);
            let xs: Vec<i64> = result.points.iter().map(|p| p.x).collect();
            assert!(
                xs.contains(&654_321),
                "spike kept at max_points {max_points}"
            );
            assert!(xs.contains(&123_457), "dip kept at max_points {max_points}");
            assert_eq!(xs[0], 0, "first point kept");
            assert_eq!(*xs.last().unwrap(), n - 1, "last point kept");
            assert!(xs.windows(2).all(|w| w[0] < w[1]), "x order");
            assert!(
                result.points.len() <= max_points,
                "{} > {max_points}",
                result.points.len()
            );
        }
    }

    #[test]
    fn a_short_series_comes_back_exactly_in_x_order() {
        let points: Vec<Point> = [(2, 5.0), (0, 1.0), (1, f64::NAN), (1, 3.0)]
            .iter()
            .enumerate()
            .map(|(seq, &(x, value))| point(seq as u64, x, value))
            .collect();
        let result = run(0, 10, 4, points.iter().copied());
        assert!(!result.downsampled);
        assert_eq!(result.non_finite, 1);
        let xs: Vec<(i64, u64)> = result.points.iter().map(Point::order).collect();
        assert_eq!(xs, vec![(0, 1), (1, 2), (1, 3), (2, 0)]);
        let everything = run(0, 10, 0, points.iter().copied());
        assert_eq!(everything.points.len(), 4);
    }

    #[test]
    fn bucket_edges_sit_exactly_at_the_range_edges() {
        // 100 steps, 10 buckets of 10: the edges are 10, 20, ...
        let downsampler = Downsampler::new(100, 199, 40);
        assert_eq!(downsampler.bucket_of(100), (0, 100, 110));
        assert_eq!(downsampler.bucket_of(109), (0, 100, 110));
        assert_eq!(downsampler.bucket_of(110), (1, 110, 120));
        assert_eq!(downsampler.bucket_of(199), (9, 190, i64::MAX));
        // Uneven: 7 steps in 3 buckets: [0, 3), [3, 5), [5, 7).
        let uneven = Downsampler::new(0, 6, 12);
        let buckets: Vec<usize> = (0..7).map(|x| uneven.bucket_of(x).0).collect();
        assert_eq!(buckets, vec![0, 0, 0, 1, 1, 2, 2]);
        for x in 0..7 {
            let (index, start, end) = uneven.bucket_of(x);
            assert!(
                start <= x && x < end,
                "{x} in bucket {index} [{start}, {end})"
            );
        }
        // Points outside the range are not counted; those on the edges are.
        let result = run(100, 199, 8, (90..=210).map(|x| point(x as u64, x, 0.0)));
        assert_eq!(result.total, 100);
        assert_eq!(result.points.first().unwrap().x, 100);
        assert_eq!(result.points.last().unwrap().x, 199);
        // The extreme i64 range does not overflow.
        let wide = Downsampler::new(i64::MIN, i64::MAX, 8);
        assert_eq!(wide.bucket_of(i64::MIN).0, 0);
        assert_eq!(wide.bucket_of(i64::MAX).0, 1);
    }

    #[test]
    fn nan_and_infinities_are_kept() {
        let n = 10_000i64;
        let value = |x: i64| match x {
            5_000 => f64::NAN,
            7_000 => f64::INFINITY,
            8_000 => f64::NEG_INFINITY,
            _ => 1.0,
        };
        let result = run(0, n - 1, 8, (0..n).map(|x| point(x as u64, x, value(x))));
        assert_eq!(result.non_finite, 3);
        let kept: Vec<i64> = result.points.iter().map(|p| p.x).collect();
        for x in [5_000, 7_000, 8_000] {
            assert!(kept.contains(&x), "{x} kept: {kept:?}");
        }
        assert!(result.points.len() <= 10, "at most 1.25 x the budget");
    }

    #[test]
    fn step_slices_give_what_pushing_each_point_gives() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(11);
        for round in 0..300 {
            let len = rng.random_range(0..3000usize);
            let mut step = rng.random_range(-50..50i64);
            let mut steps = Vec::with_capacity(len);
            let mut values = Vec::with_capacity(len);
            for _ in 0..len {
                // Repeated steps (ties), NaN, infinities and equal values.
                step += rng.random_range(0..3);
                steps.push(step);
                values.push(match rng.random_range(0..40) {
                    0 => f64::NAN,
                    1 => f64::INFINITY,
                    2 => f64::NEG_INFINITY,
                    3..=10 => 1.0,
                    _ => rng.random_range(-100.0..100.0),
                });
            }
            let timestamps: Vec<i64> = (0..len as i64).map(|i| 1000 + i).collect();
            let lo = rng.random_range(-60..60i64);
            let hi = lo + rng.random_range(0..4000i64);
            let max_points = [0, 4, 7, 40, 100, 1000][round % 6];
            let by_point = run(
                lo,
                hi,
                max_points,
                (0..len).map(|i| Point {
                    seq: 9 + i as u64,
                    x: steps[i],
                    step: steps[i],
                    timestamp: timestamps[i],
                    value: values[i],
                    smoothed: values[i],
                }),
            );
            let mut sliced = Downsampler::new(lo, hi, max_points);
            // In pieces, as a reader hands over decoded batches.
            let mut start = 0;
            while start < len {
                let stop = (start + rng.random_range(1..700)).min(len);
                sliced.push_step_slice(
                    9 + start as u64,
                    &steps[start..stop],
                    &timestamps[start..stop],
                    &values[start..stop],
                );
                start = stop;
            }
            let sliced = sliced.finish();
            assert_eq!(sliced.total, by_point.total, "round {round}");
            assert_eq!(sliced.non_finite, by_point.non_finite, "round {round}");
            assert_eq!(sliced.downsampled, by_point.downsampled, "round {round}");
            let key = |points: &[Point]| -> Vec<(u64, i64, u64)> {
                points
                    .iter()
                    .map(|p| (p.seq, p.x, p.value.to_bits()))
                    .collect()
            };
            assert_eq!(key(&sliced.points), key(&by_point.points), "round {round}");
        }
    }

    #[test]
    fn unordered_x_is_bucketed_and_returned_in_x_order() {
        // Time axis: timestamps that go back and forth.
        let xs: Vec<i64> = (0..1000).map(|i| (i * 7919) % 1000).collect();
        let result = run(
            0,
            999,
            40,
            xs.iter()
                .enumerate()
                .map(|(seq, &x)| point(seq as u64, x, x as f64)),
        );
        assert!(result.downsampled);
        let out: Vec<i64> = result.points.iter().map(|p| p.x).collect();
        assert!(out.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((out[0], *out.last().unwrap()), (0, 999));
    }
}
