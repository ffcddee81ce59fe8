//! Columnar JSON: `{"batches": [{"run_id", "steps": [...], "timestamps"?:
//! [...], "values": {"loss": [...], "acc": [...]}}]}`, where every value
//! list is as long as `steps` (a `null` value means the key has no point at
//! that step) and a missing `timestamps` means "now".

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{BulkError, RunBatches, check_key, parse_run_id};
use crate::model::float_json::JsonF64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request<'a> {
    #[serde(borrow)]
    batches: Vec<Batch<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch<'a> {
    #[serde(borrow)]
    run_id: Cow<'a, str>,
    steps: Vec<i64>,
    timestamps: Option<Vec<i64>>,
    #[serde(borrow)]
    values: BTreeMap<Cow<'a, str>, Vec<Option<JsonF64>>>,
}

/// Decodes a columnar JSON body; `now` stands in for missing timestamps.
pub fn decode(body: &[u8], now: i64, max_points: usize) -> Result<RunBatches, BulkError> {
    let request: Request<'_> = serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        let message = format!("invalid columnar JSON: {error}");
        match error.classify() {
            Category::Data => BulkError::Invalid(message),
            _ => BulkError::Malformed(message),
        }
    })?;
    let mut runs = RunBatches::new();
    for (index, batch) in request.batches.iter().enumerate() {
        let place = || format!("batches[{index}]");
        let run_id = parse_run_id(&batch.run_id, place)?;
        let steps = batch.steps.len();
        if let Some(timestamps) = &batch.timestamps
            && timestamps.len() != steps
        {
            return Err(BulkError::Invalid(format!(
                "batches[{index}]: 'timestamps' has {} entries but 'steps' has {steps}",
                timestamps.len()
            )));
        }
        let mut points = 0;
        for (key, values) in &batch.values {
            check_key(key, || format!("batches[{index}].values"))?;
            if values.len() != steps {
                return Err(BulkError::Invalid(format!(
                    "batches[{index}].values['{key}'] has {} entries but 'steps' has {steps}",
                    values.len()
                )));
            }
            points += values.iter().filter(|value| value.is_some()).count();
        }
        if runs.points() + points > max_points {
            return Err(BulkError::TooManyPoints { limit: max_points });
        }
        runs.count(points);
        let builder = runs.builder(run_id);
        for (key, values) in &batch.values {
            let key_index = builder.intern(key);
            for (row, value) in values.iter().enumerate() {
                if let Some(value) = value {
                    let timestamp = batch
                        .timestamps
                        .as_ref()
                        .map_or(now, |timestamps| timestamps[row]);
                    builder.push_indexed(key_index, batch.steps[row], timestamp, value.0);
                }
            }
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn decodes_batches_with_nulls_and_default_timestamps() {
        let body = format!(
            r#"{{"batches": [{{"run_id": "{RUN}", "steps": [1, 2],
                "values": {{"loss": [0.5, "NaN"], "acc": [null, 0.75]}}}}]}}"#
        );
        let batches = decode(body.as_bytes(), 99, 100).unwrap().finish();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0].1;
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.keys, ["acc", "loss"]);
        assert_eq!(batch.steps, [2, 1, 2]);
        assert!(batch.timestamps.iter().all(|&timestamp| timestamp == 99));
        assert!(batch.values[2].is_nan());
    }

    #[test]
    fn refuses_whole_requests_naming_the_batch() {
        let cases = [
            (
                format!(
                    r#"{{"batches": [{{"run_id": "{RUN}", "steps": [1], "values": {{"a": [1, 2]}}}}]}}"#
                ),
                "batches[0].values['a'] has 2 entries",
            ),
            (
                format!(
                    r#"{{"batches": [{{"run_id": "{RUN}", "steps": [1], "values": {{}}}}, {{"run_id": "xyz", "steps": [], "values": {{}}}}]}}"#
                ),
                "batches[1]",
            ),
            (
                format!(
                    r#"{{"batches": [{{"run_id": "{RUN}", "steps": [1], "timestamps": [], "values": {{}}}}]}}"#
                ),
                "'timestamps' has 0 entries",
            ),
            (
                format!(
                    r#"{{"batches": [{{"run_id": "{RUN}", "steps": [1], "values": {{"../x": [1]}}}}]}}"#
                ),
                "batches[0].values",
            ),
        ];
        for (body, expected) in cases {
            let error = decode(body.as_bytes(), 0, 100).err().unwrap();
            assert!(error.to_string().contains(expected), "{error} / {expected}");
        }
        assert!(matches!(
            decode(b"{\"batches\": [", 0, 100),
            Err(BulkError::Malformed(_))
        ));
        let big = format!(
            r#"{{"batches": [{{"run_id": "{RUN}", "steps": [1, 2, 3], "values": {{"a": [1, 2, 3]}}}}]}}"#
        );
        assert!(matches!(
            decode(big.as_bytes(), 0, 2),
            Err(BulkError::TooManyPoints { .. })
        ));
    }
}
