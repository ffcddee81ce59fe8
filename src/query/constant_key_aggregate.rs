//! A partial aggregate for group keys that are constant within a batch.
//!
//! The `metrics` scan emits `experiment_id` and `run_id` as string views
//! that hold one value per batch (each file and each buffer batch belongs
//! to one run). DataFusion's hash aggregate hashes and compares the 32-byte
//! `run_id` of every row all the same: over 100 M points that is a third of
//! `GROUP BY run_id`. [`ConstantKeyAggregateRule`] replaces the partial
//! stage of such aggregates (string-view group columns only, no grouping
//! sets, no `DISTINCT`) by [`ConstantKeyAggregateExec`], which looks each
//! batch's key up once when every row of the batch has the same view
//! (equal views of one array are equal values), and row by row otherwise.
//! It feeds the same accumulators with the same arguments and emits the
//! same partial states, so the final stage and the answers are unchanged.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringViewArray};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, aggregate_expressions};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

/// Replaces the partial stage of eligible aggregates by
/// [`ConstantKeyAggregateExec`]; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct ConstantKeyAggregateRule;

impl PhysicalOptimizerRule for ConstantKeyAggregateRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let replaced = node
                .downcast_ref::<AggregateExec>()
                .map(ConstantKeyAggregateExec::try_new)
                .transpose()?
                .flatten();
            Ok(match replaced {
                Some(exec) => Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>),
                None => Transformed::no(node),
            })
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "constant_key_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The partial stage of an aggregate grouped by string-view columns,
/// with one key lookup per batch when the key is constant in it.
#[derive(Debug, Clone)]
pub(crate) struct ConstantKeyAggregateExec {
    input: Arc<dyn ExecutionPlan>,
    /// Input column index and name of each group column.
    group_columns: Vec<(usize, String)>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Per aggregate: its arguments, then its ordering expressions.
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Per aggregate: its `FILTER (WHERE ...)`.
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Per aggregate: how to find the one row of a constant-key batch
    /// that `first_value` / `last_value` with an `ORDER BY` would keep.
    extremes: Vec<Option<Extreme>>,
    /// The partial aggregate's output: group columns, then states.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ConstantKeyAggregateExec {
    /// The replacement of `aggregate`, if it is eligible.
    fn try_new(aggregate: &AggregateExec) -> DfResult<Option<Self>> {
        let group_by = aggregate.group_expr();
        let input_schema = aggregate.input_schema();
        let eligible = *aggregate.mode() == AggregateMode::Partial
            && group_by.is_single()
            && !group_by.expr().is_empty()
            && aggregate.limit_options().is_none()
            && aggregate.dynamic_expressions_produced().is_empty()
            && aggregate
                .aggr_expr()
                .iter()
                .all(|expr| !expr.is_distinct() && expr.groups_accumulator_supported());
        if !eligible {
            return Ok(None);
        }
        let mut group_columns = Vec::new();
        for (expr, _) in group_by.expr() {
            let Some(column) = expr.downcast_ref::<Column>() else {
                return Ok(None);
            };
            let field = input_schema.field(column.index());
            if *field.data_type() != DataType::Utf8View {
                return Ok(None);
            }
            group_columns.push((column.index(), column.name().to_string()));
        }
        let aggregates = aggregate.aggr_expr().to_vec();
        let arguments = aggregate_expressions(&aggregates, aggregate.mode(), 0)?;
        let extremes = aggregates
            .iter()
            .zip(&arguments)
            .map(|(expr, arguments)| Extreme::of(expr, arguments.len()))
            .collect();
        let input = Arc::clone(aggregate.input());
        let schema = aggregate.schema();
        Ok(Some(ConstantKeyAggregateExec {
            properties: Self::properties_for(&input, &schema),
            input,
            group_columns,
            aggregates,
            arguments,
            filters: aggregate.filter_expr().to_vec(),
            extremes,
            schema,
        }))
    }

    fn properties_for(input: &Arc<dyn ExecutionPlan>, schema: &SchemaRef) -> Arc<PlanProperties> {
        Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(schema)),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ))
    }
}

impl DisplayAs for ConstantKeyAggregateExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let groups: Vec<&str> = self
            .group_columns
            .iter()
            .map(|(_, name)| name.as_str())
            .collect();
        let aggregates: Vec<&str> = self.aggregates.iter().map(|expr| expr.name()).collect();
        write!(
            f,
            "ConstantKeyAggregateExec: mode=Partial, gby=[{}], aggr=[{}]",
            groups.join(", "),
            aggregates.join(", ")
        )
    }
}

impl ExecutionPlan for ConstantKeyAggregateExec {
    fn name(&self) -> &str {
        "ConstantKeyAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        let expressions = self
            .arguments
            .iter()
            .flatten()
            .chain(self.filters.iter().flatten());
        for expr in expressions {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children).map_err(|_| {
            DataFusionError::Internal("ConstantKeyAggregateExec takes one input".to_string())
        })?;
        let mut exec = (*self).clone();
        exec.properties = Self::properties_for(&input, &exec.schema);
        exec.input = input;
        Ok(Arc::new(exec))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let accumulators = self
            .aggregates
            .iter()
            .map(|expr| expr.create_groups_accumulator())
            .collect::<DfResult<Vec<_>>>()?;
        let reservation = MemoryConsumer::new(format!("ConstantKeyAggregateExec[{partition}]"))
            .register(context.memory_pool());
        let state = AggregateState {
            plan: self.clone(),
            accumulators,
            keys: Keys::default(),
            group_indices: Vec::new(),
            reservation,
        };
        let schema = Arc::clone(&self.schema);
        let output = futures::stream::once(state.run(input))
            .map_ok(|batch| futures::stream::iter(batch.map(Ok)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, output)))
    }
}

/// The distinct group keys seen so far, in order of first appearance.
#[derive(Default)]
struct Keys {
    index: HashMap<Vec<Option<String>>, usize>,
    keys: Vec<Vec<Option<String>>>,
    bytes: usize,
}

impl Keys {
    /// The group index of row `row` of `columns`.
    fn group_of(&mut self, columns: &[&StringViewArray], row: usize) -> usize {
        let key: Vec<Option<String>> = columns
            .iter()
            .map(|column| column.is_valid(row).then(|| column.value(row).to_string()))
            .collect();
        if let Some(&group) = self.index.get(&key) {
            return group;
        }
        let group = self.keys.len();
        self.bytes += key
            .iter()
            .map(|value| value.as_ref().map_or(0, String::len) + 48)
            .sum::<usize>()
            * 2;
        self.keys.push(key.clone());
        self.index.insert(key, group);
        group
    }
}

/// One partition's aggregation.
struct AggregateState {
    plan: ConstantKeyAggregateExec,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    keys: Keys,
    group_indices: Vec<usize>,
    reservation: MemoryReservation,
}

impl AggregateState {
    /// Consumes `input` and returns the partial states, if any group was
    /// seen.
    async fn run(mut self, mut input: SendableRecordBatchStream) -> DfResult<Option<RecordBatch>> {
        while let Some(batch) = input.next().await {
            self.update(&batch?)?;
        }
        self.emit()
    }

    fn update(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(());
        }
        let columns = self
            .plan
            .group_columns
            .iter()
            .map(|(index, name)| {
                batch.column(*index).as_string_view_opt().ok_or_else(|| {
                    DataFusionError::Internal(format!("group column {name} is not a string view"))
                })
            })
            .collect::<DfResult<Vec<_>>>()?;
        self.group_indices.clear();
        let constant = columns.iter().all(|column| is_constant(column));
        if constant {
            let group = self.keys.group_of(&columns, 0);
            self.group_indices.resize(rows, group);
        } else {
            // Row by row, but a row with the same views as the row before
            // (runs of one key, as after a join) reuses its group.
            let mut previous: Option<(Vec<Option<u128>>, usize)> = None;
            for row in 0..rows {
                let views: Vec<Option<u128>> = columns
                    .iter()
                    .map(|column| column.is_valid(row).then(|| column.views()[row]))
                    .collect();
                let group = match &previous {
                    Some((last, group)) if *last == views => *group,
                    _ => {
                        let group = self.keys.group_of(&columns, row);
                        previous = Some((views, group));
                        group
                    }
                };
                self.group_indices.push(group);
            }
        }
        let groups = self.keys.keys.len();
        for (((accumulator, arguments), filter), extreme) in self
            .accumulators
            .iter_mut()
            .zip(&self.plan.arguments)
            .zip(&self.plan.filters)
            .zip(&self.plan.extremes)
        {
            let values = arguments
                .iter()
                .map(|expr| expr.evaluate(batch)?.into_array(rows))
                .collect::<DfResult<Vec<ArrayRef>>>()?;
            if constant
                && filter.is_none()
                && let Some(extreme) = extreme
                && let Some(row) = extreme.row(&values)
            {
                // The accumulator would keep this row of the batch: hand
                // it that row alone.
                let values: Vec<ArrayRef> =
                    values.iter().map(|array| array.slice(row, 1)).collect();
                accumulator.update_batch(&values, &self.group_indices[..1], None, groups)?;
                continue;
            }
            let filter = filter
                .as_ref()
                .map(|expr| expr.evaluate(batch)?.into_array(rows))
                .transpose()?;
            let filter = match &filter {
                Some(array) => Some(array.as_boolean_opt().ok_or_else(|| {
                    DataFusionError::Internal("an aggregate filter is not boolean".to_string())
                })?),
                None => None,
            };
            accumulator.update_batch(&values, &self.group_indices, filter, groups)?;
        }
        let size = self.keys.bytes
            + self
                .accumulators
                .iter()
                .map(|accumulator| accumulator.size())
                .sum::<usize>();
        self.reservation.try_resize(size)
    }

    fn emit(mut self) -> DfResult<Option<RecordBatch>> {
        if self.keys.keys.is_empty() {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = (0..self.plan.group_columns.len())
            .map(|position| {
                Arc::new(StringViewArray::from_iter(
                    self.keys.keys.iter().map(|key| key[position].as_deref()),
                )) as ArrayRef
            })
            .collect();
        for accumulator in &mut self.accumulators {
            columns.extend(accumulator.state(EmitTo::All)?);
        }
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.plan.schema),
            columns,
        )?))
    }
}

/// `first_value` or `last_value` of one value ordered by integer columns
/// (steps, timestamps). DataFusion's accumulator keeps, of a batch's rows
/// in one group, the first row whose ordering is least (`first_value`) or
/// greatest (`last_value`), ties going to the earlier row; [`Self::row`]
/// finds that row with plain integer comparisons instead of a generic row
/// comparator per row, and the accumulator is given only it.
#[derive(Debug, Clone)]
struct Extreme {
    /// `first_value` (least ordering) rather than `last_value`.
    first: bool,
    /// Per ordering column: descending.
    descending: Vec<bool>,
    /// `IGNORE NULLS`: rows with a NULL value do not count.
    ignore_nulls: bool,
}

impl Extreme {
    /// The shortcut for `expr`, whose arguments (value, then ordering
    /// expressions) number `arguments`, if it applies.
    fn of(expr: &AggregateFunctionExpr, arguments: usize) -> Option<Extreme> {
        let first = match expr.fun().name() {
            "first_value" => true,
            "last_value" => false,
            _ => return None,
        };
        let order_bys = expr.order_bys();
        if order_bys.is_empty() || arguments != order_bys.len() + 1 {
            return None;
        }
        Some(Extreme {
            first,
            descending: order_bys
                .iter()
                .map(|sort| sort.options.descending)
                .collect(),
            ignore_nulls: expr.ignore_nulls(),
        })
    }

    /// The row the accumulator would keep of `values` (value, then
    /// ordering columns), when every ordering column is a 64-bit integer
    /// or timestamp column without NULLs (and, under `IGNORE NULLS`, the
    /// value has no NULLs); `None` otherwise, and for no rows.
    fn row(&self, values: &[ArrayRef]) -> Option<usize> {
        let (value, orderings) = values.split_first()?;
        if orderings.len() != self.descending.len()
            || value.is_empty()
            || (self.ignore_nulls && value.null_count() > 0)
        {
            return None;
        }
        let columns: Vec<&[i64]> = orderings
            .iter()
            .map(|column| integers(column.as_ref()))
            .collect::<Option<_>>()?;
        let better = |candidate: usize, best: usize| {
            for (column, &descending) in columns.iter().zip(&self.descending) {
                let mut ordering = column[candidate].cmp(&column[best]);
                if descending {
                    ordering = ordering.reverse();
                }
                if ordering.is_ne() {
                    // Strictly less for first_value, greater for last_value.
                    return ordering.is_lt() == self.first;
                }
            }
            false
        };
        let mut best = 0;
        for candidate in 1..value.len() {
            if better(candidate, best) {
                best = candidate;
            }
        }
        Some(best)
    }
}

/// The values of a 64-bit integer or timestamp column without NULLs.
fn integers(column: &dyn Array) -> Option<&[i64]> {
    use arrow::datatypes::{
        Int64Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    if column.null_count() > 0 {
        return None;
    }
    let values: &[i64] = match column.data_type() {
        DataType::Int64 => column.as_primitive_opt::<Int64Type>()?.values(),
        DataType::Timestamp(unit, _) => {
            use arrow::datatypes::TimeUnit;
            match unit {
                TimeUnit::Second => column.as_primitive_opt::<TimestampSecondType>()?.values(),
                TimeUnit::Millisecond => column
                    .as_primitive_opt::<TimestampMillisecondType>()?
                    .values(),
                TimeUnit::Microsecond => column
                    .as_primitive_opt::<TimestampMicrosecondType>()?
                    .values(),
                TimeUnit::Nanosecond => column
                    .as_primitive_opt::<TimestampNanosecondType>()?
                    .values(),
            }
        }
        _ => return None,
    };
    Some(values)
}

/// Whether every row of `column` holds the same non-null value, judged by
/// equal views (which, within one array, mean equal values; different
/// views of equal values just take the row-by-row path).
fn is_constant(column: &StringViewArray) -> bool {
    let views = column.views();
    column.null_count() == 0 && views.iter().all(|view| *view == views[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_columns_are_recognised_by_their_views() {
        let long = "0123456789abcdef0123456789abcdef";
        // One value for every row, stored once, as the metrics scan does.
        let mut builder = arrow::array::StringViewBuilder::new();
        builder.try_append_value_n(long, 5).unwrap();
        assert!(is_constant(&builder.finish()));
        let mixed = StringViewArray::from_iter_values([long, long, "other"]);
        assert!(!is_constant(&mixed));
        let with_null = StringViewArray::from_iter([Some(long), None]);
        assert!(!is_constant(&with_null));
        // Equal values stored twice are not the same view: the row-by-row
        // path handles them, with the same result.
        let twice = StringViewArray::from_iter_values([long, long]);
        let mut keys = Keys::default();
        let first = keys.group_of(&[&twice], 0);
        assert_eq!(keys.group_of(&[&twice], 1), first);
        assert_eq!(keys.group_of(&[&mixed], 2), first + 1);
        assert_eq!(keys.group_of(&[&with_null], 1), first + 2);
        assert_eq!(keys.group_of(&[&with_null], 1), first + 2);
    }

    /// Runs `sql` over a table of string-view keys, with and without the
    /// rule; returns both results as text and whether the rule was used.
    async fn both_ways(sql: &str) -> (String, String, bool) {
        use arrow::array::{Float64Array, Int64Array};
        use arrow::datatypes::{Field, Schema};
        use datafusion::datasource::MemTable;
        use datafusion::execution::SessionStateBuilder;
        use datafusion::prelude::{SessionConfig, SessionContext};

        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Utf8View, true),
            Field::new("s", DataType::Int64, false),
            Field::new("v", DataType::Float64, true),
        ]));
        let long = |name: &str| format!("{name}-0123456789abcdef0123456789");
        let batch = |keys: Vec<Option<String>>, first: i64| {
            let rows = keys.len() as i64;
            RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(StringViewArray::from_iter(keys)) as ArrayRef,
                    Arc::new(Int64Array::from_iter_values(first..first + rows)),
                    Arc::new(Float64Array::from_iter(
                        (first..first + rows).map(|s| (s % 7 != 3).then_some(s as f64 * 0.5)),
                    )),
                ],
            )
            .unwrap()
        };
        let a = long("a");
        let b = long("b");
        let partitions = vec![
            vec![
                batch(vec![Some(a.clone()); 5], 0),
                batch(vec![Some(b.clone()); 3], 10),
                batch(
                    vec![Some(a.clone()), Some("short".into()), None, Some(b.clone())],
                    20,
                ),
                // An empty string and NULL side by side, twice over.
                batch(
                    vec![Some(String::new()), None, None, Some(String::new())],
                    50,
                ),
            ],
            vec![
                batch(vec![Some(b.clone()); 4], 30),
                batch(vec![None; 2], 40),
            ],
        ];
        let mut outputs = Vec::new();
        let mut used = false;
        for with_rule in [false, true] {
            let mut builder = SessionStateBuilder::new()
                .with_config(SessionConfig::new().with_target_partitions(2))
                .with_default_features();
            if with_rule {
                builder = builder.with_physical_optimizer_rule(Arc::new(ConstantKeyAggregateRule));
            }
            let context = SessionContext::new_with_state(builder.build());
            let table = MemTable::try_new(Arc::clone(&schema), partitions.clone()).unwrap();
            context.register_table("t", Arc::new(table)).unwrap();
            let frame = context.sql(sql).await.unwrap();
            let plan = frame.clone().create_physical_plan().await.unwrap();
            let shown = datafusion::physical_plan::displayable(plan.as_ref())
                .indent(true)
                .to_string();
            used |= shown.contains("ConstantKeyAggregateExec");
            let batches = frame.collect().await.unwrap();
            outputs.push(
                arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string(),
            );
        }
        let with_rule = outputs.pop().unwrap();
        (outputs.pop().unwrap(), with_rule, used)
    }

    #[tokio::test]
    async fn answers_are_the_same_as_without_the_rule() {
        for sql in [
            "SELECT g, count(*), count(v), avg(v), max(v), min(v), sum(v) FROM t GROUP BY g ORDER BY g",
            "SELECT g, last_value(v ORDER BY s) AS l, first_value(v ORDER BY s DESC) AS f \
             FROM t GROUP BY g ORDER BY g",
            // Ties on the ordering (within one partition: across partitions
            // the winner of a tie depends on arrival order either way).
            "SELECT g, last_value(v ORDER BY s / 4) AS l, first_value(v ORDER BY s / 4) AS f, \
             last_value(v ORDER BY s / 4 DESC, s % 2) AS d, \
             first_value(s ORDER BY s / 4, s % 2 DESC) AS e FROM t GROUP BY g ORDER BY g",
            "SELECT g, last_value(v ORDER BY s / 4) FILTER (WHERE s % 3 = 0) AS l \
             FROM t GROUP BY g ORDER BY g",
            "SELECT g, sum(v) FILTER (WHERE s > 2) AS f FROM t WHERE s <> 31 GROUP BY g ORDER BY g",
            "SELECT g, g AS h, count(*) FROM t GROUP BY g, g ORDER BY g",
            // Planned as a count of (g, v) groups: the outer stage is ours.
            "SELECT g, count(DISTINCT v) FROM t GROUP BY g ORDER BY g",
        ] {
            let (without, with, used) = both_ways(sql).await;
            assert!(used, "the rule was not used for {sql}");
            assert_eq!(without, with, "{sql}");
        }
    }

    #[tokio::test]
    async fn other_aggregates_are_left_alone() {
        for sql in [
            "SELECT s % 2 AS k, count(*) FROM t GROUP BY s % 2 ORDER BY k",
            "SELECT count(*) FROM t",
        ] {
            let (without, with, used) = both_ways(sql).await;
            assert!(!used, "the rule was used for {sql}");
            assert_eq!(without, with, "{sql}");
        }
    }
}
