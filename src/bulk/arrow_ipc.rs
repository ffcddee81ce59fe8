//! Arrow IPC stream: record batches with columns `run_id` and `key`
//! (strings, plain or dictionary-encoded), `step` (integer), `value`
//! (float) and optionally `timestamp` (integer milliseconds, or an Arrow
//! timestamp of any unit, converted to milliseconds: pandas writes
//! nanoseconds). Dictionary-encoded `run_id` and `key` columns are the fast
//! path: each distinct value is checked once, then rows are routed by index.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, RecordBatch, StringArray};
use arrow::buffer::Buffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, TimeUnit};
use arrow::ipc::reader::StreamDecoder;
use bytes::Bytes;

use super::{BulkError, RunBatches, check_key, parse_run_id};
use crate::model::{MetricBatchBuilder, RunId};

fn column(batch: &RecordBatch, name: &str) -> Result<Option<ArrayRef>, BulkError> {
    Ok(batch
        .schema()
        .index_of(name)
        .ok()
        .map(|index| Arc::clone(batch.column(index))))
}

fn required_column(batch: &RecordBatch, name: &str) -> Result<ArrayRef, BulkError> {
    column(batch, name)?.ok_or_else(|| {
        BulkError::Invalid(format!(
            "the Arrow stream has no '{name}' column (expected run_id, key, step, value and \
             optionally timestamp)"
        ))
    })
}

fn cast_to(array: &ArrayRef, to: &DataType, name: &str) -> Result<ArrayRef, BulkError> {
    if array.data_type() == to {
        return Ok(Arc::clone(array));
    }
    cast(array, to).map_err(|error| {
        BulkError::Invalid(format!(
            "column '{name}' of type {} cannot be read as {to}: {error}",
            array.data_type()
        ))
    })
}

/// The `timestamp` column as integer milliseconds. An Arrow timestamp is
/// converted from its unit (rounding down to the millisecond); any other
/// type is cast and taken as milliseconds.
fn timestamps_ms(array: &ArrayRef) -> Result<ArrayRef, BulkError> {
    let DataType::Timestamp(unit, _) = array.data_type() else {
        return cast_to(array, &DataType::Int64, "timestamp");
    };
    let unit = *unit;
    // A timestamp cast to Int64 keeps its raw count of `unit`s.
    let raw = cast_to(array, &DataType::Int64, "timestamp")?;
    let raw = raw.as_primitive::<Int64Type>();
    let converted = match unit {
        TimeUnit::Second => {
            raw.try_unary::<_, Int64Type, _>(|seconds| {
                seconds.checked_mul(1000).ok_or_else(|| {
                    arrow::error::ArrowError::ComputeError(format!(
                        "{seconds} s is out of range in milliseconds"
                    ))
                })
            })
            .map_err(|error| BulkError::Invalid(format!("column 'timestamp' (seconds): {error}")))?
        }
        TimeUnit::Millisecond => raw.clone(),
        TimeUnit::Microsecond => raw.unary::<_, Int64Type>(|micros| micros.div_euclid(1_000)),
        TimeUnit::Nanosecond => raw.unary::<_, Int64Type>(|nanos| nanos.div_euclid(1_000_000)),
    };
    Ok(Arc::new(converted))
}

fn refuse_nulls(array: &dyn Array, name: &str, first_row: usize) -> Result<(), BulkError> {
    if array.null_count() == 0 {
        return Ok(());
    }
    let row = (0..array.len())
        .find(|&row| array.is_null(row))
        .unwrap_or(0);
    Err(BulkError::Invalid(format!(
        "row {}: '{name}' is null",
        first_row + row
    )))
}

/// A string column as dictionary indices plus distinct values.
fn dictionary(array: &ArrayRef, name: &str) -> Result<DictionaryArray<Int32Type>, BulkError> {
    let target = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let cast = cast_to(array, &target, name)?;
    Ok(cast.as_dictionary::<Int32Type>().clone())
}

/// The first row whose dictionary index is `index`.
fn first_row_of(indices: &[i32], index: usize) -> usize {
    indices
        .iter()
        .position(|&value| value as usize == index)
        .unwrap_or(0)
}

/// Decodes an Arrow IPC stream; `now` stands in for missing timestamps.
/// The body's buffers are used in place (no copy) where they are aligned.
///
/// arrow-rs's IPC reader can panic on a malformed stream (a buffer offset
/// past the body, found by `tests/hostile_inputs.rs`); such a panic is
/// caught here and is a malformed-body error like any other.
pub fn decode(body: Bytes, now: i64, max_points: usize) -> Result<RunBatches, BulkError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_stream(body, now, max_points)
    }))
    .unwrap_or_else(|_| {
        Err(BulkError::Malformed(
            "bad Arrow IPC stream: its buffers point outside the message".to_string(),
        ))
    })
}

fn decode_stream(body: Bytes, now: i64, max_points: usize) -> Result<RunBatches, BulkError> {
    let malformed = |error: arrow::error::ArrowError| {
        BulkError::Malformed(format!("bad Arrow IPC stream: {error}"))
    };
    let mut buffer = Buffer::from(body);
    let mut decoder = StreamDecoder::new();
    let mut runs = RunBatches::new();
    let mut first_row = 0usize;
    while !buffer.is_empty() {
        let Some(batch) = decoder.decode(&mut buffer).map_err(malformed)? else {
            continue;
        };
        let rows = batch.num_rows();
        if runs.points() + rows > max_points {
            return Err(BulkError::TooManyPoints { limit: max_points });
        }
        decode_batch(&batch, first_row, now, &mut runs)?;
        runs.count(rows);
        first_row += rows;
    }
    decoder.finish().map_err(malformed)?;
    Ok(runs)
}

fn decode_batch(
    batch: &RecordBatch,
    first_row: usize,
    now: i64,
    runs: &mut RunBatches,
) -> Result<(), BulkError> {
    let run_column = dictionary(&required_column(batch, "run_id")?, "run_id")?;
    let key_column = dictionary(&required_column(batch, "key")?, "key")?;
    let steps = cast_to(&required_column(batch, "step")?, &DataType::Int64, "step")?;
    let values = cast_to(
        &required_column(batch, "value")?,
        &DataType::Float64,
        "value",
    )?;
    let timestamps = column(batch, "timestamp")?
        .map(|array| timestamps_ms(&array))
        .transpose()?;
    refuse_nulls(&run_column, "run_id", first_row)?;
    refuse_nulls(&key_column, "key", first_row)?;
    refuse_nulls(steps.as_ref(), "step", first_row)?;
    refuse_nulls(values.as_ref(), "value", first_row)?;
    if let Some(timestamps) = &timestamps {
        refuse_nulls(timestamps.as_ref(), "timestamp", first_row)?;
    }
    let steps = steps.as_primitive::<Int64Type>().values();
    let values = values.as_primitive::<Float64Type>().values();
    let timestamps = timestamps
        .as_ref()
        .map(|array| array.as_primitive::<Int64Type>().values());
    let run_indices = run_column.keys().values();
    let key_indices = key_column.keys().values();
    let run_texts: &StringArray = run_column.values().as_string::<i32>();
    let key_texts: &StringArray = key_column.values().as_string::<i32>();

    // Check each distinct run id and key once (those the rows use).
    let mut run_ids: Vec<Option<RunId>> = vec![None; run_texts.len()];
    for &index in run_indices.iter() {
        let slot = &mut run_ids[index as usize];
        if slot.is_none() {
            // The row is looked for only to name it in an error.
            *slot = Some(parse_run_id(run_texts.value(index as usize), || {
                format!(
                    "row {}",
                    first_row + first_row_of(run_indices, index as usize)
                )
            })?);
        }
    }
    let mut key_checked = vec![false; key_texts.len()];
    for &index in key_indices.iter() {
        let checked = &mut key_checked[index as usize];
        if !*checked {
            check_key(key_texts.value(index as usize), || {
                format!(
                    "row {}",
                    first_row + first_row_of(key_indices, index as usize)
                )
            })?;
            *checked = true;
        }
    }

    // Route rows to their runs, one run at a time (one builder lookup per
    // run, not per row); per run, map dictionary keys to batch keys once.
    let mut rows_of_run: Vec<Vec<u32>> = vec![Vec::new(); run_texts.len()];
    let single_run = run_indices.iter().all(|&index| index == run_indices[0]);
    if !single_run {
        for (row, &run_index) in run_indices.iter().enumerate() {
            rows_of_run[run_index as usize].push(row as u32);
        }
    }
    let mut key_map: Vec<Option<u32>> = vec![None; key_texts.len()];
    if single_run {
        // One run (the usual case): intern the keys the rows use, then copy
        // the columns whole.
        let Some(run_id) = run_indices
            .first()
            .and_then(|&index| run_ids.get(index as usize).copied().flatten())
        else {
            return Ok(());
        };
        let builder: &mut MetricBatchBuilder = runs.builder(run_id);
        builder.reserve(batch.num_rows());
        let key_map: Vec<u32> = key_checked
            .iter()
            .enumerate()
            .map(|(index, &used)| {
                if used {
                    builder.intern(key_texts.value(index))
                } else {
                    0
                }
            })
            .collect();
        builder.append_columns(
            key_indices.iter().map(|&index| key_map[index as usize]),
            steps,
            timestamps.map(|timestamps| &timestamps[..]),
            now,
            values,
        );
        return Ok(());
    }
    for (run_index, run_id) in run_ids.iter().enumerate() {
        let Some(run_id) = *run_id else { continue };
        let builder: &mut MetricBatchBuilder = runs.builder(run_id);
        builder.reserve(rows_of_run[run_index].len());
        key_map.iter_mut().for_each(|slot| *slot = None);
        for &row in &rows_of_run[run_index] {
            let row = row as usize;
            let key_index = key_indices[row] as usize;
            let batch_key = match key_map[key_index] {
                Some(batch_key) => batch_key,
                None => {
                    let batch_key = builder.intern(key_texts.value(key_index));
                    key_map[key_index] = Some(batch_key);
                    batch_key
                }
            };
            let timestamp = timestamps.map_or(now, |timestamps| timestamps[row]);
            builder.push_indexed(batch_key, steps[row], timestamp, values[row]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::ipc::writer::StreamWriter;

    use super::*;

    const RUN_A: &str = "0123456789abcdef0123456789abcdef";
    const RUN_B: &str = "fedcba9876543210fedcba9876543210";

    fn stream(batches: &[RecordBatch]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = StreamWriter::try_new(&mut out, &batches[0].schema()).unwrap();
        for batch in batches {
            writer.write(batch).unwrap();
        }
        writer.finish().unwrap();
        drop(writer);
        out
    }

    fn plain_batch(
        runs: Vec<&str>,
        keys: Vec<&str>,
        steps: Vec<i32>,
        timestamps: bool,
    ) -> RecordBatch {
        let rows = steps.len();
        let mut fields = vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, true),
            Field::new("step", DataType::Int32, false),
            Field::new("value", DataType::Float64, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(runs)),
            Arc::new(StringArray::from(keys)),
            Arc::new(Int32Array::from(steps)),
            Arc::new(Float64Array::from(
                (0..rows).map(|row| row as f64 + 0.5).collect::<Vec<_>>(),
            )),
        ];
        if timestamps {
            fields.push(Field::new("timestamp", DataType::Int64, false));
            columns.push(Arc::new(Int64Array::from(vec![7i64; rows])));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    #[test]
    fn timestamp_columns_of_every_unit_become_milliseconds() {
        use arrow::array::{
            TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
            TimestampSecondArray,
        };
        let millis = 1_732_530_000_123i64;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampSecondArray::from(vec![millis / 1000])),
            Arc::new(TimestampMillisecondArray::from(vec![millis]).with_timezone("UTC")),
            Arc::new(TimestampMicrosecondArray::from(vec![millis * 1000 + 999])),
            Arc::new(TimestampNanosecondArray::from(vec![
                millis * 1_000_000 + 999_999,
            ])),
        ];
        let expected = [millis / 1000 * 1000, millis, millis, millis];
        for (column, expected) in columns.into_iter().zip(expected) {
            let batch = with_timestamp_column(column.clone());
            let runs = decode(Bytes::from(stream(&[batch])), 0, 100)
                .unwrap_or_else(|error| panic!("{}: {error}", column.data_type()));
            let batches = runs.finish();
            assert_eq!(
                batches[0].1.timestamps,
                [expected],
                "{}",
                column.data_type()
            );
        }
        // Before 1970, nanoseconds round down like the other units.
        let batch = with_timestamp_column(Arc::new(TimestampNanosecondArray::from(vec![-1i64])));
        let batches = decode(Bytes::from(stream(&[batch])), 0, 100)
            .unwrap()
            .finish();
        assert_eq!(batches[0].1.timestamps, [-1]);
        // Seconds too large for milliseconds are refused, not wrapped.
        let batch =
            with_timestamp_column(Arc::new(TimestampSecondArray::from(vec![i64::MAX / 10])));
        let Err(error) = decode(Bytes::from(stream(&[batch])), 0, 100) else {
            panic!("seconds past the millisecond range were accepted");
        };
        assert!(error.to_string().contains("out of range"), "{error}");
    }

    fn with_timestamp_column(timestamps: ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("step", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
            Field::new("timestamp", timestamps.data_type().clone(), false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec![RUN_A])),
                Arc::new(StringArray::from(vec!["loss"])),
                Arc::new(Int64Array::from(vec![1i64])),
                Arc::new(Float64Array::from(vec![0.5])),
                timestamps,
            ],
        )
        .unwrap()
    }

    #[test]
    fn routes_rows_to_runs_across_batches() {
        let first = plain_batch(
            vec![RUN_A, RUN_B, RUN_A],
            vec!["loss", "loss", "acc"],
            vec![1, 2, 3],
            true,
        );
        let second = plain_batch(vec![RUN_B], vec!["acc"], vec![4], true);
        let runs = decode(Bytes::from(stream(&[first, second])), 0, 100).unwrap();
        assert_eq!(runs.points(), 4);
        let batches = runs.finish();
        assert_eq!(batches.len(), 2);
        let (run_a, batch_a) = &batches[0];
        assert_eq!(run_a.to_string(), RUN_A);
        assert_eq!(batch_a.keys, ["loss", "acc"]);
        assert_eq!(batch_a.steps, [1, 3]);
        assert_eq!(batch_a.values, [0.5, 2.5]);
        assert_eq!(batch_a.timestamps, [7, 7]);
        let (_, batch_b) = &batches[1];
        assert_eq!(batch_b.keys, ["loss", "acc"]);
        assert_eq!(batch_b.steps, [2, 4]);
    }

    #[test]
    fn errors_name_the_row() {
        let bad_run = plain_batch(vec![RUN_A, "nope"], vec!["a", "b"], vec![1, 2], false);
        let error = decode(Bytes::from(stream(&[bad_run])), 0, 100)
            .err()
            .unwrap();
        assert!(error.to_string().starts_with("row 1:"), "{error}");

        let first = plain_batch(vec![RUN_A], vec!["a"], vec![1], false);
        let bad_key = plain_batch(vec![RUN_A, RUN_A], vec!["ok", "../x"], vec![1, 2], false);
        let error = decode(Bytes::from(stream(&[first, bad_key])), 0, 100)
            .err()
            .unwrap();
        assert!(error.to_string().starts_with("row 2:"), "{error}");

        let schema = Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, true),
            Field::new("step", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ]));
        let null_key = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![RUN_A, RUN_A])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(Float64Array::from(vec![1.0, 2.0])),
            ],
        )
        .unwrap();
        let error = decode(Bytes::from(stream(&[null_key])), 0, 100)
            .err()
            .unwrap();
        assert_eq!(error.to_string(), "row 1: 'key' is null");

        assert!(matches!(
            decode(Bytes::from_static(b"not arrow"), 0, 100),
            Err(BulkError::Malformed(_))
        ));
        let many = plain_batch(vec![RUN_A; 3], vec!["a"; 3], vec![1, 2, 3], false);
        assert!(matches!(
            decode(Bytes::from(stream(&[many])), 0, 2),
            Err(BulkError::TooManyPoints { .. })
        ));
    }
}
