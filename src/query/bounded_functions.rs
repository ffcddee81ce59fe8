//! SQL functions whose output can be far larger than their input
//! (`repeat('x', 2000000000)`, `range(1, 1e9)`, `lpad`, `array_repeat`,
//! `replace` with an empty pattern...). They allocate their result outside
//! DataFusion's memory pool, so one call could take the server's memory.
//! Each is replaced, under its own name, by a wrapper that computes the
//! largest output its arguments can produce and refuses the call past the
//! query's limit, before the inner function allocates anything.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, FieldRef, Int64Type, IntervalDayTimeType, IntervalMonthDayNanoType, IntervalUnit,
    IntervalYearMonthType, TimeUnit,
};
use datafusion::common::{DataFusionError, ExprSchema, Result, ScalarValue};
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};

/// How a function's largest output is estimated from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: bytes of text times n.
    Repeat,
    /// `lpad` / `rpad(text, n [, fill])`: n characters of up to 4 bytes.
    Pad,
    /// `range` / `generate_series(start, stop [, step])` as list values.
    Series,
    /// `array_repeat(element, n)`: n copies of the element.
    ArrayRepeat,
    /// `array_resize(list, n [, fill])`: n elements.
    ArrayResize,
    /// `replace(text, from, to)`: every match (one per byte of text for
    /// an empty or one-byte pattern) grows by the replacement.
    Replace,
    /// `regexp_replace(text, pattern, replacement [, flags])`: a match at
    /// every position, at worst.
    RegexpReplace,
}

/// The functions wrapped, by name.
const WRAPPED: [(&str, Growth); 9] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
];

/// Replaces the growing functions of `state` by bounded ones: a call may
/// produce at most `max_output_bytes` (for all rows of one batch).
pub(crate) fn register(state: &mut SessionState, max_output_bytes: usize) -> Result<()> {
    for (name, growth) in WRAPPED {
        let Some(inner) = state.scalar_functions().get(name).cloned() else {
            continue;
        };
        let bounded = BoundedFunction {
            inner: Arc::clone(inner.inner()),
            growth,
            max_output_bytes,
        };
        state.register_udf(Arc::new(ScalarUDF::new_from_impl(bounded)))?;
    }
    Ok(())
}

/// A function that refuses calls whose output would pass the limit, and
/// otherwise is the inner function in every respect.
#[derive(Debug)]
struct BoundedFunction {
    inner: Arc<dyn ScalarUDFImpl>,
    growth: Growth,
    max_output_bytes: usize,
}

impl PartialEq for BoundedFunction {
    fn eq(&self, other: &Self) -> bool {
        self.inner.name() == other.inner.name()
            && self.growth == other.growth
            && self.max_output_bytes == other.max_output_bytes
    }
}

impl Eq for BoundedFunction {}

impl Hash for BoundedFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.growth.hash(state);
        self.max_output_bytes.hash(state);
    }
}

impl BoundedFunction {
    /// Refuses a call whose output could pass the limit.
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let rows = args.number_rows.max(1);
        let arguments: Vec<Argument> =
            args.args.iter().map(Argument::new).collect::<Result<_>>()?;
        let first = arguments.first();
        let second = arguments.get(1);
        let third = arguments.get(2);
        let per_row = |row: usize| -> Option<u128> {
            match self.growth {
                Growth::Repeat => Some(first?.byte_length(row).saturating_mul(second?.count(row)?)),
                Growth::Pad => Some(second?.count(row)?.saturating_mul(4)),
                Growth::Series => {
                    series_length(&arguments, row).map(|length| length.saturating_mul(8))
                }
                Growth::ArrayRepeat => Some(
                    second?
                        .count(row)?
                        .saturating_mul(first?.value_size() as u128),
                ),
                Growth::ArrayResize => Some(second?.count(row)?.saturating_mul(16)),
                Growth::Replace => {
                    let text = first?.byte_length(row);
                    let pattern = second.map_or(0, |pattern| pattern.byte_length(row)).max(1);
                    let replacement = third.map_or(0, |replacement| replacement.byte_length(row));
                    Some(text + (text / pattern + 1).saturating_mul(replacement))
                }
                Growth::RegexpReplace => {
                    let text = first?.byte_length(row);
                    let replacement = third.map_or(0, |replacement| replacement.byte_length(row));
                    Some(text + (text + 1).saturating_mul(replacement))
                }
            }
        };
        // A scalar-only call is the same for every row: count it once.
        let all_scalar = arguments.iter().all(|argument| argument.scalar);
        let largest = if all_scalar {
            per_row(0).unwrap_or(0).saturating_mul(rows as u128)
        } else {
            (0..rows)
                .map(|row| per_row(row).unwrap_or(0))
                .fold(0u128, u128::saturating_add)
        };
        if largest > self.max_output_bytes as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() could produce about {} MiB for {} row(s), more than the limit of {} MiB \
                 for one call (a quarter of --sql-memory-mb)",
                self.inner.name(),
                largest >> 20,
                rows,
                self.max_output_bytes >> 20
            )));
        }
        Ok(())
    }
}

/// One argument of a call, with its integer view computed once.
struct Argument {
    /// The values (one row for a scalar).
    array: ArrayRef,
    /// Whether it is one value for every row.
    scalar: bool,
    /// Integers, or dates and timestamps in nanoseconds, when it is one of
    /// those.
    positions: Option<ArrayRef>,
}

impl Argument {
    fn new(value: &ColumnarValue) -> Result<Self> {
        let (array, scalar) = match value {
            ColumnarValue::Array(array) => (Arc::clone(array), false),
            ColumnarValue::Scalar(scalar) => (scalar.to_array_of_size(1)?, true),
        };
        let positions = match array.data_type() {
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => cast(
                &cast(&array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?,
                &DataType::Int64,
            )
            .ok(),
            data_type if data_type.is_integer() || data_type.is_floating() => {
                cast(&array, &DataType::Int64).ok()
            }
            _ => None,
        };
        Ok(Argument {
            array,
            scalar,
            positions,
        })
    }

    fn index(&self, row: usize) -> usize {
        if self.scalar { 0 } else { row }
    }

    /// The byte length of a string or binary value (0 for null or others).
    fn byte_length(&self, row: usize) -> u128 {
        let row = self.index(row);
        let array = &self.array;
        if array.is_null(row) {
            return 0;
        }
        let length = match array.data_type() {
            DataType::Utf8 => array.as_string::<i32>().value(row).len(),
            DataType::LargeUtf8 => array.as_string::<i64>().value(row).len(),
            DataType::Utf8View => array.as_string_view().value(row).len(),
            DataType::Binary => array.as_binary::<i32>().value(row).len(),
            DataType::LargeBinary => array.as_binary::<i64>().value(row).len(),
            DataType::BinaryView => array.as_binary_view().value(row).len(),
            _ => 0,
        };
        length as u128
    }

    /// An integer (or date or timestamp in nanoseconds); `None` for null.
    fn integer(&self, row: usize) -> Option<i64> {
        let row = self.index(row);
        let positions = self.positions.as_ref()?.as_primitive::<Int64Type>();
        (!positions.is_null(row)).then(|| positions.value(row))
    }

    /// A non-negative count (negative counts 0; `None` for null).
    fn count(&self, row: usize) -> Option<u128> {
        Some(u128::try_from(self.integer(row)?.max(0)).unwrap_or(0))
    }

    /// Bytes one value takes, at least 8.
    fn value_size(&self) -> usize {
        (self.array.get_array_memory_size() / self.array.len().max(1)).max(8)
    }

    /// A step in the unit of [`Argument::integer`]: integers as they are,
    /// intervals in nanoseconds (a month counted as 28 days, which
    /// overestimates the elements).
    fn step(&self, row: usize) -> Option<i128> {
        const DAY: i128 = 86_400_000_000_000;
        let index = self.index(row);
        let array = &self.array;
        if array.is_null(index) {
            return None;
        }
        Some(match array.data_type() {
            DataType::Interval(IntervalUnit::MonthDayNano) => {
                let value = array
                    .as_primitive::<IntervalMonthDayNanoType>()
                    .value(index);
                i128::from(value.months) * 28 * DAY
                    + i128::from(value.days) * DAY
                    + i128::from(value.nanoseconds)
            }
            DataType::Interval(IntervalUnit::DayTime) => {
                let value = array.as_primitive::<IntervalDayTimeType>().value(index);
                i128::from(value.days) * DAY + i128::from(value.milliseconds) * 1_000_000
            }
            DataType::Interval(IntervalUnit::YearMonth) => {
                let months = array.as_primitive::<IntervalYearMonthType>().value(index);
                i128::from(months) * 28 * DAY
            }
            _ => i128::from(self.integer(row)?),
        })
    }
}

/// Elements of `range`/`generate_series(start, stop [, step])` for one
/// row.
fn series_length(arguments: &[Argument], row: usize) -> Option<u128> {
    let (start, stop) = match arguments {
        [stop] => (0, stop.integer(row)?),
        [start, stop, ..] => (start.integer(row)?, stop.integer(row)?),
        [] => return Some(0),
    };
    let step = match arguments.get(2) {
        Some(step) => step.step(row)?,
        None => 1,
    };
    if step == 0 {
        // The function itself refuses a zero step.
        return Some(0);
    }
    let span = (i128::from(stop) - i128::from(start)).unsigned_abs();
    Some(span / step.unsigned_abs() + 1)
}

#[warn(clippy::missing_trait_methods)]
impl ScalarUDFImpl for BoundedFunction {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }

    fn with_updated_config(
        &self,
        _config: &datafusion::common::config::ConfigOptions,
    ) -> Option<ScalarUDF> {
        None
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.inner.struct_field_mapping(literal_args)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.placement(args)
    }
}
