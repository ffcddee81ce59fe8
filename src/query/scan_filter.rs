//! The `key` and `step` filters the `metrics` scan applies exactly.
//!
//! Metric files are sorted by `(key, step, timestamp)` and their footers
//! record where each key's rows start and the first and last step of every
//! block of [`crate::storage::aggregates::BLOCK_ROWS`] rows. A filter of
//! the forms below therefore selects row ranges of a file without decoding
//! a row, so the scan takes them over entirely ([`ScanFilter`]) and
//! DataFusion neither filters the rows again nor reads the `key` column
//! for them:
//!
//! - `key = 'literal'` (either side), `key IN ('a', 'b', ...)`;
//! - `step <op> integer` for `=`, `<`, `<=`, `>`, `>=` (either side),
//!   `step BETWEEN a AND b`.
//!
//! Several such filters combine by intersection. Any other filter (`NOT`,
//! `OR`, `NULL` literals, casts, other columns) is left to DataFusion.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Int64Type};
use arrow::error::ArrowError;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, expr::InList};

use crate::storage::aggregates::KeyAggregates;
use crate::storage::schema::{KEY_COLUMN, STEP_COLUMN};

/// What the exactly applied filters of one scan allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScanFilter {
    /// The keys allowed; `None` allows every key.
    keys: Option<BTreeSet<String>>,
    /// Smallest and greatest step allowed (an empty range allows none).
    steps: RangeInclusive<i64>,
}

impl Default for ScanFilter {
    fn default() -> Self {
        ScanFilter {
            keys: None,
            steps: i64::MIN..=i64::MAX,
        }
    }
}

/// One filter the scan can apply exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Condition {
    /// The key is one of these.
    Keys(BTreeSet<String>),
    /// The step lies in this range.
    Steps(RangeInclusive<i64>),
}

impl ScanFilter {
    /// Whether the scan applies `filter` exactly (one of the forms in the
    /// module documentation).
    pub(crate) fn handles(filter: &Expr) -> bool {
        condition(filter).is_some()
    }

    /// The combination of every filter among `filters` the scan handles;
    /// the others are ignored.
    pub(crate) fn from_filters(filters: &[Expr]) -> ScanFilter {
        let mut combined = ScanFilter::default();
        for condition in filters.iter().filter_map(condition) {
            match condition {
                Condition::Keys(keys) => {
                    combined.keys = Some(match combined.keys.take() {
                        Some(before) => before.intersection(&keys).cloned().collect(),
                        None => keys,
                    });
                }
                Condition::Steps(range) => {
                    let low = (*combined.steps.start()).max(*range.start());
                    let high = (*combined.steps.end()).min(*range.end());
                    combined.steps = low..=high;
                }
            }
        }
        combined
    }

    /// The filter with its step range narrowed to `low..=high`.
    pub(crate) fn within_steps(&self, low: i64, high: i64) -> ScanFilter {
        ScanFilter {
            keys: self.keys.clone(),
            steps: (*self.steps.start()).max(low)..=(*self.steps.end()).min(high),
        }
    }

    /// Whether every row passes (no filter handled).
    pub(crate) fn is_everything(&self) -> bool {
        self.keys.is_none() && !self.restricts_steps()
    }

    /// Whether no row can pass.
    pub(crate) fn is_nothing(&self) -> bool {
        self.steps.is_empty() || self.keys.as_ref().is_some_and(BTreeSet::is_empty)
    }

    /// Whether the step range is restricted.
    pub(crate) fn restricts_steps(&self) -> bool {
        *self.steps.start() != i64::MIN || *self.steps.end() != i64::MAX
    }

    /// Whether the key filter is restricted.
    pub(crate) fn restricts_keys(&self) -> bool {
        self.keys.is_some()
    }

    /// Whether rows of `key` can pass.
    pub(crate) fn allows_key(&self, key: &str) -> bool {
        self.keys.as_ref().is_none_or(|keys| keys.contains(key))
    }

    /// Whether steps from `low` to `high` can meet the step filter.
    pub(crate) fn meets_steps(&self, low: i64, high: i64) -> bool {
        high >= *self.steps.start() && low <= *self.steps.end() && !self.steps.is_empty()
    }

    /// Which rows of a step column lie in the step range.
    pub(crate) fn step_mask(&self, column: &ArrayRef) -> Result<BooleanArray, ArrowError> {
        let steps = column.as_primitive_opt::<Int64Type>().ok_or_else(|| {
            ArrowError::InvalidArgumentError(format!("step column of type {}", column.data_type()))
        })?;
        let (low, high) = (*self.steps.start(), *self.steps.end());
        let values = steps.values();
        let in_range =
            BooleanBuffer::collect_bool(values.len(), |row| (low..=high).contains(&values[row]));
        Ok(BooleanArray::new(in_range, steps.nulls().cloned()))
    }

    /// The file rows of `key` that may pass, from its block aggregates, as
    /// `(range, whole)` where `whole` tells that every row of the range
    /// passes the step filter (otherwise the rows must be checked).
    pub(crate) fn key_rows(&self, key: &KeyAggregates) -> Vec<(std::ops::Range<u64>, bool)> {
        if !self.allows_key(&key.key) || self.is_nothing() {
            return Vec::new();
        }
        if !self.restricts_steps() {
            return vec![(key.first_row..key.first_row + key.rows, true)];
        }
        let mut out: Vec<(std::ops::Range<u64>, bool)> = Vec::new();
        for (start, block) in key.block_starts().zip(&key.blocks) {
            // A block is sorted by step: its first and last rows bound it.
            let (low, high) = (block.first.step, block.last.step);
            if high < *self.steps.start() || low > *self.steps.end() {
                continue;
            }
            let whole = self.steps.contains(&low) && self.steps.contains(&high);
            let range = start..start + u64::from(block.rows);
            match out.last_mut() {
                Some((last, last_whole)) if last.end == range.start && *last_whole == whole => {
                    last.end = range.end;
                }
                _ => out.push((range, whole)),
            }
        }
        out
    }

    /// A text for `EXPLAIN`.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(keys) = &self.keys {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            parts.push(format!("key IN ({})", keys.join(", ")));
        }
        if self.restricts_steps() {
            parts.push(format!(
                "step BETWEEN {} AND {}",
                self.steps.start(),
                self.steps.end()
            ));
        }
        if parts.is_empty() {
            "true".to_string()
        } else {
            parts.join(" AND ")
        }
    }

    /// The rows of `batch` that pass, checking the key (column `key`) when
    /// `check_keys` and the step (column `step`) when `check_steps`. The
    /// columns checked must be in the batch.
    pub(crate) fn filter_batch(
        &self,
        batch: RecordBatch,
        check_keys: bool,
        check_steps: bool,
    ) -> DfResult<RecordBatch> {
        let check_keys = check_keys && self.restricts_keys();
        let check_steps = check_steps && self.restricts_steps();
        if batch.num_rows() == 0 || (!check_keys && !check_steps) {
            return Ok(batch);
        }
        let mut mask: Option<BooleanArray> = None;
        if check_keys {
            let column = column(&batch, KEY_COLUMN)?;
            mask = Some(self.key_mask(column)?);
        }
        if check_steps {
            let in_range = self.step_mask(column(&batch, STEP_COLUMN)?)?;
            mask = Some(match mask {
                Some(keys) => arrow::compute::and(&keys, &in_range)?,
                None => in_range,
            });
        }
        match mask {
            Some(mask) if mask.null_count() == 0 && mask.true_count() == mask.len() => Ok(batch),
            Some(mask) => Ok(filter_record_batch(&batch, &mask)?),
            None => Ok(batch),
        }
    }

    /// Which rows of a key column hold an allowed key.
    fn key_mask(&self, column: &ArrayRef) -> DfResult<BooleanArray> {
        let rows = column.len();
        let mut out = BooleanBufferBuilder::new(rows);
        match column.data_type() {
            DataType::Dictionary(_, _) => {
                let dictionary = column.as_any_dictionary();
                let values = self.key_mask(dictionary.values())?;
                let allowed: Vec<bool> = (0..values.len())
                    .map(|index| values.is_valid(index) && values.value(index))
                    .collect();
                let keys = dictionary.normalized_keys();
                let nulls = column.logical_nulls();
                for (row, key) in keys.into_iter().enumerate() {
                    out.append(
                        nulls.as_ref().is_none_or(|nulls| nulls.is_valid(row))
                            && allowed.get(key).copied().unwrap_or(false),
                    );
                }
            }
            DataType::Utf8 => {
                let strings = column.as_string::<i32>();
                for row in 0..rows {
                    out.append(strings.is_valid(row) && self.allows_key(strings.value(row)));
                }
            }
            DataType::LargeUtf8 => {
                let strings = column.as_string::<i64>();
                for row in 0..rows {
                    out.append(strings.is_valid(row) && self.allows_key(strings.value(row)));
                }
            }
            DataType::Utf8View => {
                let strings = column.as_string_view();
                for row in 0..rows {
                    out.append(strings.is_valid(row) && self.allows_key(strings.value(row)));
                }
            }
            other => {
                return Err(DataFusionError::Internal(format!(
                    "key column of type {other}"
                )));
            }
        }
        Ok(BooleanArray::new(out.finish(), None))
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> DfResult<&'a ArrayRef> {
    batch
        .schema()
        .index_of(name)
        .map(|index| batch.column(index))
        .map_err(|_| DataFusionError::Internal(format!("the scan did not read column {name}")))
}

/// The condition `filter` states, if it is one the scan handles.
fn condition(filter: &Expr) -> Option<Condition> {
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (name, literal, op) = match (column_name(left), column_name(right)) {
                (Some(name), None) => (name, literal(right)?, *op),
                (None, Some(name)) => (name, literal(left)?, op.swap()?),
                _ => return None,
            };
            match name {
                KEY_COLUMN if op == Operator::Eq => {
                    Some(Condition::Keys(BTreeSet::from([string(&literal)?])))
                }
                STEP_COLUMN => {
                    let value = integer(&literal)?;
                    let range = match op {
                        Operator::Eq => value..=value,
                        Operator::Lt => match value.checked_sub(1) {
                            Some(high) => i64::MIN..=high,
                            None => empty(),
                        },
                        Operator::LtEq => i64::MIN..=value,
                        Operator::Gt => match value.checked_add(1) {
                            Some(low) => low..=i64::MAX,
                            None => empty(),
                        },
                        Operator::GtEq => value..=i64::MAX,
                        _ => return None,
                    };
                    Some(Condition::Steps(range))
                }
                _ => None,
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if column_name(expr) == Some(STEP_COLUMN) => {
            let low = integer(&literal(low)?)?;
            let high = integer(&literal(high)?)?;
            Some(Condition::Steps(low..=high))
        }
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if column_name(expr) == Some(KEY_COLUMN) && !list.is_empty() => {
            let keys = list
                .iter()
                .map(|item| string(&literal(item)?))
                .collect::<Option<BTreeSet<String>>>()?;
            Some(Condition::Keys(keys))
        }
        _ => None,
    }
}

/// A range no step lies in.
#[allow(clippy::reversed_empty_ranges)]
fn empty() -> RangeInclusive<i64> {
    1..=0
}

fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(column) => Some(column.name.as_str()),
        _ => None,
    }
}

fn literal(expr: &Expr) -> Option<ScalarValue> {
    match expr {
        Expr::Literal(value, _) => Some(value.clone()),
        _ => None,
    }
}

/// The text of a non-NULL string literal.
fn string(value: &ScalarValue) -> Option<String> {
    match value {
        ScalarValue::Utf8(Some(text))
        | ScalarValue::Utf8View(Some(text))
        | ScalarValue::LargeUtf8(Some(text)) => Some(text.clone()),
        ScalarValue::Dictionary(_, inner) => string(inner),
        _ => None,
    }
}

/// The value of a non-NULL integer literal that fits an `i64`.
fn integer(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::Int64(Some(value)) => Some(*value),
        ScalarValue::Int32(Some(value)) => Some(i64::from(*value)),
        ScalarValue::Int16(Some(value)) => Some(i64::from(*value)),
        ScalarValue::Int8(Some(value)) => Some(i64::from(*value)),
        ScalarValue::UInt32(Some(value)) => Some(i64::from(*value)),
        ScalarValue::UInt16(Some(value)) => Some(i64::from(*value)),
        ScalarValue::UInt8(Some(value)) => Some(i64::from(*value)),
        ScalarValue::UInt64(Some(value)) => i64::try_from(*value).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int64Array, StringArray};
    use arrow::datatypes::{Field, Int32Type, Schema};
    use datafusion::logical_expr::{col, lit};
    use std::sync::Arc;

    #[test]
    fn recognises_key_and_step_filters_only() {
        let handled = [
            col("key").eq(lit("loss")),
            lit("loss").eq(col("key")),
            col("key").eq(lit(ScalarValue::Dictionary(
                Box::new(DataType::Int32),
                Box::new(ScalarValue::from("loss")),
            ))),
            col("key").in_list(vec![lit("a"), lit("b")], false),
            col("step").between(lit(1i64), lit(5i64)),
            col("step").lt(lit(3i32)),
            lit(3i64).lt(col("step")),
            col("step").eq(lit(4u8)),
        ];
        for filter in &handled {
            assert!(ScanFilter::handles(filter), "{filter}");
        }
        let left = [
            col("key").not_eq(lit("loss")),
            col("key").in_list(vec![lit("a")], true),
            col("key").in_list(vec![lit("a"), lit(ScalarValue::Utf8(None))], false),
            col("key").eq(lit(ScalarValue::Utf8(None))),
            col("step").not_between(lit(1i64), lit(5i64)),
            col("step").lt(lit(2.5f64)),
            col("step").lt(lit(u64::MAX)),
            col("step").not_eq(lit(3i64)),
            col("value").gt(lit(1.0)),
            col("key").eq(lit("a")).or(col("step").eq(lit(1i64))),
            col("step").eq(col("timestamp")),
            col("run_id").eq(lit("r")),
        ];
        for filter in &left {
            assert!(!ScanFilter::handles(filter), "{filter}");
        }
    }

    #[test]
    fn filters_combine_by_intersection() {
        let filter = ScanFilter::from_filters(&[
            col("key").in_list(vec![lit("a"), lit("b"), lit("c")], false),
            col("key").in_list(vec![lit("b"), lit("c"), lit("d")], false),
            col("step").gt_eq(lit(10i64)),
            col("step").lt(lit(20i64)),
            col("step").between(lit(0i64), lit(15i64)),
            col("value").gt(lit(1.0)),
        ]);
        assert_eq!(
            filter.describe(),
            "key IN (b, c) AND step BETWEEN 10 AND 15"
        );
        assert!(!filter.is_nothing() && !filter.is_everything());
        assert!(ScanFilter::from_filters(&[col("step").gt(lit(i64::MAX))]).is_nothing());
        assert!(ScanFilter::from_filters(&[col("step").lt(lit(i64::MIN))]).is_nothing());
        assert!(
            ScanFilter::from_filters(&[col("key").eq(lit("a")), col("key").eq(lit("b"))])
                .is_nothing()
        );
        assert!(ScanFilter::from_filters(&[col("value").gt(lit(1.0))]).is_everything());
    }

    #[test]
    fn batches_are_filtered_by_key_and_step_for_every_key_type() {
        let filter = ScanFilter::from_filters(&[
            col("key").in_list(vec![lit("a"), lit("c")], false),
            col("step").between(lit(2i64), lit(4i64)),
        ]);
        let steps: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5, 3]));
        let texts = vec!["a", "a", "b", "c", "c", ""];
        let dictionary: ArrayRef = Arc::new(
            texts
                .iter()
                .copied()
                .collect::<DictionaryArray<Int32Type>>(),
        );
        let keys: [ArrayRef; 3] = [
            dictionary,
            Arc::new(StringArray::from(texts.clone())),
            Arc::new(arrow::array::StringViewArray::from(texts.clone())),
        ];
        for key in keys {
            let schema = Arc::new(Schema::new(vec![
                Field::new("key", key.data_type().clone(), false),
                Field::new("step", DataType::Int64, false),
            ]));
            let batch =
                RecordBatch::try_new(schema, vec![Arc::clone(&key), Arc::clone(&steps)]).unwrap();
            let out = filter.filter_batch(batch.clone(), true, true).unwrap();
            let out_steps = out.column(1).as_primitive::<Int64Type>();
            assert_eq!(out_steps.values().to_vec(), vec![2, 4], "{key:?}");
            // Unchecked columns are left alone.
            let out = filter.filter_batch(batch.clone(), false, false).unwrap();
            assert_eq!(out.num_rows(), 6);
            let out = filter.filter_batch(batch, false, true).unwrap();
            assert_eq!(out.num_rows(), 4);
        }
    }
}
