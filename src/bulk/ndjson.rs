//! NDJSON: one point per line, `{"run_id", "key", "step", "value",
//! "timestamp"?}`. The decoder is fed the body chunk by chunk as it
//! arrives, so the text is never held whole; blank lines are skipped. A
//! line may be at most [`MAX_LINE_BYTES`] long.

use std::borrow::Cow;

use serde::Deserialize;

use super::{BulkError, RunBatches, check_key, parse_run_id};
use crate::model::RunId;
use crate::model::float_json::JsonF64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Point<'a> {
    #[serde(borrow)]
    run_id: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default)]
    step: i64,
    value: JsonF64,
    timestamp: Option<i64>,
}

/// Longest line: a point is a few hundred bytes at most (a 500-byte key,
/// a run id, four numbers), so this leaves room for any spacing.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// An incremental NDJSON decoder.
pub struct NdjsonDecoder {
    pending: Vec<u8>,
    line: usize,
    now: i64,
    max_points: usize,
    runs: RunBatches,
    last_run: Option<(String, RunId)>,
}

impl NdjsonDecoder {
    /// A decoder; `now` stands in for missing timestamps.
    pub fn new(now: i64, max_points: usize) -> Self {
        NdjsonDecoder {
            pending: Vec::new(),
            line: 0,
            now,
            max_points,
            runs: RunBatches::new(),
            last_run: None,
        }
    }

    /// Decodes every complete line in `chunk` (plus what was pending).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), BulkError> {
        let mut rest = chunk;
        if !self.pending.is_empty() {
            match rest.iter().position(|&byte| byte == b'\n') {
                None => {
                    self.keep_pending(rest)?;
                    return Ok(());
                }
                Some(end) => {
                    self.keep_pending(&rest[..end])?;
                    let line = std::mem::take(&mut self.pending);
                    self.decode_line(&line)?;
                    rest = &rest[end + 1..];
                }
            }
        }
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            if end > MAX_LINE_BYTES {
                return Err(self.line_too_long());
            }
            self.decode_line(&rest[..end])?;
            rest = &rest[end + 1..];
        }
        self.keep_pending(rest)
    }

    /// Keeps the start of a line that continues in the next chunk.
    fn keep_pending(&mut self, part: &[u8]) -> Result<(), BulkError> {
        if self.pending.len() + part.len() > MAX_LINE_BYTES {
            return Err(self.line_too_long());
        }
        self.pending.extend_from_slice(part);
        Ok(())
    }

    fn line_too_long(&self) -> BulkError {
        BulkError::LineTooLong {
            line: self.line + 1,
            limit: MAX_LINE_BYTES,
        }
    }

    /// Decodes the last line (one without a final newline) and returns the
    /// batches.
    pub fn finish(mut self) -> Result<RunBatches, BulkError> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.decode_line(&line)?;
        }
        Ok(self.runs)
    }

    fn decode_line(&mut self, line: &[u8]) -> Result<(), BulkError> {
        self.line += 1;
        let number = self.line;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let point: Point<'_> = serde_json::from_slice(line).map_err(|error| {
            use serde_json::error::Category;
            let message = format!("line {number}: {error}");
            match error.classify() {
                Category::Data => BulkError::Invalid(message),
                _ => BulkError::Malformed(message),
            }
        })?;
        let run_id = match &self.last_run {
            Some((text, run_id)) if *text == point.run_id => *run_id,
            _ => {
                let run_id = parse_run_id(&point.run_id, || format!("line {number}"))?;
                self.last_run = Some((point.run_id.to_string(), run_id));
                run_id
            }
        };
        if self.runs.points() >= self.max_points {
            return Err(BulkError::TooManyPoints {
                limit: self.max_points,
            });
        }
        let builder = self.runs.builder(run_id);
        let known_keys = builder.key_count();
        let key = builder.intern(&point.key);
        if builder.key_count() > known_keys {
            check_key(&point.key, || format!("line {number}"))?;
        }
        builder.push_indexed(
            key,
            point.step,
            point.timestamp.unwrap_or(self.now),
            point.value.0,
        );
        self.runs.count(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "0123456789abcdef0123456789abcdef";

    fn lines(count: usize) -> String {
        (0..count)
            .map(|step| {
                format!(
                    r#"{{"run_id": "{RUN}", "key": "loss", "step": {step}, "value": {step}.5}}"#
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn lines_split_across_chunks_decode_once() {
        let text = lines(100);
        for chunk_size in [1, 7, 64, text.len()] {
            let mut decoder = NdjsonDecoder::new(42, 1000);
            for chunk in text.as_bytes().chunks(chunk_size) {
                decoder.feed(chunk).unwrap();
            }
            let batches = decoder.finish().unwrap().finish();
            assert_eq!(batches.len(), 1);
            let batch = &batches[0].1;
            assert_eq!(batch.steps, (0..100).collect::<Vec<i64>>());
            assert_eq!(batch.values[3], 3.5);
            assert!(batch.timestamps.iter().all(|&timestamp| timestamp == 42));
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_whole_or_in_pieces() {
        let long = format!("{}\n", " ".repeat(MAX_LINE_BYTES + 1));
        let mut decoder = NdjsonDecoder::new(0, 10);
        decoder.feed(format!("{}\n", lines(2)).as_bytes()).unwrap();
        let error = decoder.feed(long.as_bytes()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("line 3 is longer than the limit of {MAX_LINE_BYTES} bytes for one point")
        );
        // Fed in small pieces with no newline: refused once the pending
        // part passes the limit, never held whole.
        let mut decoder = NdjsonDecoder::new(0, 10);
        let piece = vec![b' '; 4096];
        let mut refused = None;
        for round in 0..100 {
            if let Err(error) = decoder.feed(&piece) {
                refused = Some((round, error));
                break;
            }
        }
        let (round, error) = refused.expect("refused");
        assert_eq!(round, MAX_LINE_BYTES / piece.len());
        assert!(
            matches!(error, BulkError::LineTooLong { line: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn errors_name_the_line() {
        let mut text = lines(3);
        text.push_str("\n\n{\"run_id\": \"nope\", \"key\": \"a\", \"value\": 1}\n");
        let mut decoder = NdjsonDecoder::new(0, 1000);
        let error = decoder.feed(text.as_bytes()).err().unwrap();
        assert!(error.to_string().starts_with("line 5:"), "{error}");

        let mut decoder = NdjsonDecoder::new(0, 1000);
        let error = decoder
            .feed(
                format!("{{\"run_id\": \"{RUN}\", \"key\": \"a/../b\", \"value\": 1}}\n")
                    .as_bytes(),
            )
            .err()
            .unwrap();
        assert!(error.to_string().starts_with("line 1:"), "{error}");

        let mut decoder = NdjsonDecoder::new(0, 1000);
        decoder.feed(b"{\"run_id\": ").unwrap();
        assert!(matches!(decoder.finish(), Err(BulkError::Malformed(_))));

        let mut decoder = NdjsonDecoder::new(0, 2);
        assert!(matches!(
            decoder.feed(format!("{}\n", lines(3)).as_bytes()),
            Err(BulkError::TooManyPoints { .. })
        ));
    }
}
