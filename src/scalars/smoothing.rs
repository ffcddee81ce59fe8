//! Debiased exponential moving average, as TensorBoard draws smoothed
//! curves: `ema = w * ema + (1 - w) * value`, divided by `1 - w^n` after
//! `n` finite values so the start of the curve is not pulled toward zero.
//! NaN and infinite values pass through unchanged and do not enter the
//! average.
//!
//! It runs over the full-resolution series in `(step, timestamp)` order,
//! from the series' first point, so a point's smoothed value does not
//! depend on the zoom range or on downsampling.

/// The running state of a debiased EMA.
#[derive(Clone, Copy, Debug)]
pub struct Ema {
    weight: f64,
    accumulated: f64,
    /// `weight^n` after `n` finite values.
    weight_power: f64,
}

impl Ema {
    /// An average with smoothing `weight` in `[0, 1)`.
    pub fn new(weight: f64) -> Self {
        Ema {
            weight,
            accumulated: 0.0,
            weight_power: 1.0,
        }
    }

    /// Takes the next value and returns its smoothed value.
    #[inline]
    pub fn next(&mut self, value: f64) -> f64 {
        if !value.is_finite() {
            return value;
        }
        self.accumulated = self.accumulated * self.weight + (1.0 - self.weight) * value;
        // Once `1 - w^n` is 1.0 in f64, stop multiplying: `w^n` would sink
        // into subnormal numbers, whose arithmetic is many times slower.
        if self.weight_power > 1e-20 {
            self.weight_power *= self.weight;
        } else {
            self.weight_power = 0.0;
        }
        self.accumulated / (1.0 - self.weight_power)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_weight_is_the_identity_and_constants_stay_constant() {
        let mut ema = Ema::new(0.0);
        for value in [1.0, -3.0, 7.5] {
            assert_eq!(ema.next(value), value);
        }
        let mut ema = Ema::new(0.9);
        for _ in 0..100 {
            assert!((ema.next(2.5) - 2.5).abs() < 1e-12);
        }
    }

    #[test]
    fn matches_the_debiased_definition_and_skips_non_finite_values() {
        let mut ema = Ema::new(0.6);
        assert_eq!(ema.next(1.0), 1.0, "debiasing makes the first value exact");
        let expected = (0.6 * 0.4 * 1.0 + 0.4 * 2.0) / (1.0 - 0.36);
        assert!((ema.next(2.0) - expected).abs() < 1e-12);
        assert!(ema.next(f64::NAN).is_nan());
        assert_eq!(ema.next(f64::INFINITY), f64::INFINITY);
        let third = ((0.6 * 0.4 + 0.4 * 2.0) * 0.6 + 0.4 * 4.0) / (1.0 - 0.216);
        assert!((ema.next(4.0) - third).abs() < 1e-12);
    }
}
