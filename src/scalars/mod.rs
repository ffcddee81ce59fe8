//! The scalar API behind training curves: series of one or many runs and
//! keys, by step or by time, downsampled to a bounded size without losing
//! spikes, optionally smoothed, and followed live.
//!
//! - [`stream`] reads one key's points from files and buffers in
//!   `(step, timestamp)` order with bounded memory;
//! - [`smoothing`] is the debiased EMA;
//! - [`downsample`] keeps each bucket's first, min, max and last point;
//! - [`query`] plans and runs series reads (one or many runs and keys);
//! - [`history`] pages through every point of a series in MLflow's order;
//! - [`follow`] turns stored and live points into a resumable stream.

pub mod downsample;
pub mod follow;
pub mod history;
pub mod query;
pub mod smoothing;
pub mod stream;

use std::path::PathBuf;

use thiserror::Error;

use crate::engine::EngineError;
use crate::error_kind::{Classify, ErrorKind};
use crate::model::validation::{KeyKind, validate_key};

pub use query::{
    DEFAULT_MAX_POINTS, MAX_MAX_POINTS, ScalarSeries, SeriesParams, SeriesResult, XAxis,
};

/// Errors of the scalar API.
#[derive(Debug, Error)]
pub enum ScalarError {
    /// A parameter is out of range or malformed.
    #[error("{0}")]
    Invalid(String),
    /// The engine refused or failed (unknown run, shutting down, ...).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A metric file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading a metric file failed (damage, a vanished file, a store
    /// that does not answer).
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// A background read task failed.
    #[error("background read failed: {0}")]
    Task(String),
    /// `max_points=0` (every point) would answer with too many points.
    #[error(
        "{what} hold more than {limit} points, the most one answer with max_points=0 (every \
         point) may carry; ask for max_points (spikes are kept) or a narrower start/end range"
    )]
    TooManyPoints {
        /// What was asked for.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A file's block aggregates disagree with its rows (the read falls
    /// back to the full scan).
    #[error("block aggregates cannot be used: {0}")]
    Aggregates(String),
}

impl Classify for ScalarError {
    fn kind(&self) -> ErrorKind {
        match self {
            ScalarError::Invalid(_) => ErrorKind::InvalidParameter,
            ScalarError::TooManyPoints { .. } => ErrorKind::InvalidParameter,
            ScalarError::Engine(error) => error.kind(),
            ScalarError::Io { .. }
            | ScalarError::Storage(_)
            | ScalarError::Task(_)
            | ScalarError::Aggregates(_) => ErrorKind::Internal,
        }
    }
}

/// A key selector: an exact key, or a glob where `*` matches any run of
/// characters (`/` included) and `?` one character, so `train/*` selects
/// every key under the `train/` prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPattern {
    /// Exactly this key.
    Exact(String),
    /// Keys the glob matches.
    Glob(String),
}

impl KeyPattern {
    /// Parses a selector; exact keys must follow the key rules.
    pub fn parse(text: &str) -> Result<KeyPattern, ScalarError> {
        if text.contains(['*', '?']) {
            if text.len() > 500 {
                let start: String = text.chars().take(40).collect();
                return Err(ScalarError::Invalid(format!(
                    "key pattern '{start}...' is longer than 500 characters"
                )));
            }
            Ok(KeyPattern::Glob(text.to_string()))
        } else {
            validate_key(KeyKind::Metric, text)
                .map_err(|error| ScalarError::Invalid(error.to_string()))?;
            Ok(KeyPattern::Exact(text.to_string()))
        }
    }

    /// Whether `key` is selected.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyPattern::Exact(exact) => exact == key,
            KeyPattern::Glob(glob) => glob_matches(glob.as_bytes(), key.as_bytes()),
        }
    }
}

/// Whether any pattern selects `key` (an empty list selects every key).
pub fn any_matches(patterns: &[KeyPattern], key: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|pattern| pattern.matches(key))
}

/// Glob matching with `*` and `?`, in linear time (greedy with
/// backtracking to the last star).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            if pattern[p] == b'?' {
                // Skip a whole UTF-8 character.
                t += utf8_width(text[t]);
            } else {
                t += 1;
            }
            p += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            let next = star_t + utf8_width(text[star_t]);
            star = Some((star_p, next));
            p = star_p + 1;
            t = next;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&byte| byte == b'*')
}

fn utf8_width(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_select_prefixes_and_patterns() {
        let train = KeyPattern::parse("train/*").unwrap();
        assert!(matches!(train, KeyPattern::Glob(_)));
        assert!(train.matches("train/loss"));
        assert!(train.matches("train/layer/0/grad"));
        assert!(!train.matches("eval/loss"));
        assert!(!train.matches("train"));
        let middle = KeyPattern::parse("*/loss").unwrap();
        assert!(middle.matches("train/loss") && middle.matches("eval/loss"));
        assert!(!middle.matches("train/loss_scale"));
        let one = KeyPattern::parse("layer?/w").unwrap();
        assert!(one.matches("layer1/w") && !one.matches("layer12/w"));
        assert!(KeyPattern::parse("*").unwrap().matches(""));
        assert!(KeyPattern::parse("a*b*c").unwrap().matches("aXbYbZc"));
        assert!(!KeyPattern::parse("a*b*c").unwrap().matches("aXbYbZ"));
    }

    #[test]
    fn exact_keys_follow_the_key_rules() {
        assert_eq!(
            KeyPattern::parse("loss").unwrap(),
            KeyPattern::Exact("loss".into())
        );
        assert!(KeyPattern::parse("a/../b").is_err());
        assert!(KeyPattern::parse("bad\"quote").is_err());
        assert!(any_matches(&[], "anything"));
    }
}
