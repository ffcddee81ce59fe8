//! Directory pruning: which runs a query's `experiment_id` / `run_id`
//! filters select, decided before any file is opened, buffer copied or
//! catalog row built.
//!
//! Filters that refer only to those two columns are evaluated, exactly as
//! DataFusion would, on small batches of ids; the runs whose row passes
//! every such filter are the ones read. Filters on `experiment_id` alone
//! are evaluated once per experiment, and a `run_id = '…'` or
//! `run_id IN (…)` term narrows the candidates to the runs it names, so a
//! query about one experiment or one run costs the same over a million
//! runs as over a thousand.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use crate::catalog::CatalogState;
use crate::model::{ExperimentId, RunId};

/// Name of the experiment id column.
pub(crate) const EXPERIMENT_ID: &str = "experiment_id";
/// Name of the run id column.
pub(crate) const RUN_ID: &str = "run_id";

/// Rows per evaluation batch (below `u16::MAX`, so dictionary-typed id
/// columns never overflow their keys).
const CHUNK_ROWS: usize = 32 * 1024;

/// The runs a query may read: those of the catalog copy it started with.
#[derive(Clone, Debug)]
pub(crate) struct RunList {
    catalog: Arc<CatalogState>,
    /// Whether these are all the runs the query may read (a token limited
    /// to experiments), rather than the runs known when it started (later
    /// runs readable too).
    closed: bool,
}

impl RunList {
    /// Every run of `catalog`.
    pub(crate) fn from_catalog(catalog: Arc<CatalogState>) -> Self {
        RunList {
            catalog,
            closed: false,
        }
    }

    /// The same list as the only runs the query may read: without a run
    /// filter, scans read these runs, never every run of the engine.
    pub(crate) fn closed(mut self) -> Self {
        self.closed = true;
        self
    }

    /// Number of runs.
    pub(crate) fn len(&self) -> usize {
        self.catalog.run_count()
    }

    /// The catalog copy the runs come from.
    pub(crate) fn catalog(&self) -> &Arc<CatalogState> {
        &self.catalog
    }

    fn all_ids(&self) -> HashSet<RunId> {
        self.catalog.runs().map(|run| run.run_id).collect()
    }
}

/// Whether a filter refers only to `experiment_id` and `run_id` (and so can
/// be answered by choosing runs).
pub(crate) fn is_run_filter(filter: &Expr) -> bool {
    let columns = filter.column_refs();
    !columns.is_empty()
        && columns
            .iter()
            .all(|column| column.name == EXPERIMENT_ID || column.name == RUN_ID)
}

/// The runs that pass every run filter among `filters`, or `None` (every
/// run) when no filter restricts runs and the list is not closed.
/// `id_types` are the types the table declares for `experiment_id` and
/// `run_id`.
pub(crate) fn select_runs(
    state: &dyn Session,
    runs: &RunList,
    filters: &[Expr],
    id_types: (&DataType, &DataType),
) -> DfResult<Option<HashSet<RunId>>> {
    let run_filters: Vec<&Expr> = filters
        .iter()
        .filter(|filter| is_run_filter(filter))
        .flat_map(|filter| split_conjunction(filter))
        .collect();
    if run_filters.is_empty() {
        return Ok(runs.closed.then(|| runs.all_ids()));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new(EXPERIMENT_ID, id_types.0.clone(), false),
        Field::new(RUN_ID, id_types.1.clone(), false),
    ]));
    let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
    let catalog = runs.catalog();

    // Terms on the experiment alone: one row per experiment.
    let (on_experiment, on_run): (Vec<&Expr>, Vec<&Expr>) =
        run_filters.into_iter().partition(|filter| {
            filter
                .column_refs()
                .iter()
                .all(|column| column.name == EXPERIMENT_ID)
        });
    let experiments: Vec<ExperimentId> = match conjunction(on_experiment.into_iter().cloned()) {
        Some(predicate) => {
            let predicate = state.create_physical_expr(predicate, &df_schema)?;
            let candidates: Vec<ExperimentId> = catalog.experiments_with_runs().collect();
            let mut chosen = Vec::new();
            for chunk in candidates.chunks(CHUNK_ROWS) {
                let rows = chunk.iter().map(|experiment| (*experiment, None));
                for (index, passed) in evaluate(&predicate, &schema, id_types, rows)?
                    .into_iter()
                    .enumerate()
                {
                    if passed {
                        chosen.push(chunk[index]);
                    }
                }
            }
            chosen
        }
        None => catalog.experiments_with_runs().collect(),
    };

    // Runs of those experiments, narrowed to the ids a term names.
    let named = named_run_ids(&on_run);
    let candidates: Vec<(ExperimentId, RunId)> = match named {
        Some(named) => {
            let experiments: HashSet<ExperimentId> = experiments.into_iter().collect();
            named
                .into_iter()
                .filter_map(|run_id| catalog.run(run_id))
                .filter(|run| experiments.contains(&run.experiment_id))
                .map(|run| (run.experiment_id, run.run_id))
                .collect()
        }
        None => experiments
            .into_iter()
            .flat_map(|experiment| {
                catalog
                    .runs_of(experiment)
                    .map(move |run| (experiment, run.run_id))
            })
            .collect(),
    };
    let Some(predicate) = conjunction(on_run.into_iter().cloned()) else {
        return Ok(Some(
            candidates.into_iter().map(|(_, run_id)| run_id).collect(),
        ));
    };
    let predicate = state.create_physical_expr(predicate, &df_schema)?;
    let mut selected = HashSet::new();
    for chunk in candidates.chunks(CHUNK_ROWS) {
        let rows = chunk
            .iter()
            .map(|(experiment, run_id)| (*experiment, Some(*run_id)));
        for (index, passed) in evaluate(&predicate, &schema, id_types, rows)?
            .into_iter()
            .enumerate()
        {
            if passed {
                selected.insert(chunk[index].1);
            }
        }
    }
    Ok(Some(selected))
}

/// Whether each row (an experiment, and a run or none) passes `predicate`.
fn evaluate(
    predicate: &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
    schema: &Arc<Schema>,
    id_types: (&DataType, &DataType),
    rows: impl ExactSizeIterator<Item = (ExperimentId, Option<RunId>)> + Clone,
) -> DfResult<Vec<bool>> {
    let experiments: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows.clone().map(|(experiment, _)| experiment.to_string()),
    ));
    let run_ids: ArrayRef =
        Arc::new(StringArray::from_iter_values(rows.map(|(_, run)| {
            run.map(|run_id| run_id.to_string()).unwrap_or_default()
        })));
    let batch = RecordBatch::try_new(
        Arc::clone(schema),
        vec![cast(&experiments, id_types.0)?, cast(&run_ids, id_types.1)?],
    )?;
    let verdict = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
    let verdict = cast(&verdict, &DataType::Boolean)?;
    let verdict = verdict.as_boolean();
    Ok((0..batch.num_rows())
        .map(|row| verdict.is_valid(row) && verdict.value(row))
        .collect())
}

/// The run ids a conjunction of `terms` can match at most, when one term
/// is `run_id = '…'` or `run_id IN ('…', …)`: a text that is not how a run
/// id is written matches no run. `None` when no term names run ids.
fn named_run_ids(terms: &[&Expr]) -> Option<Vec<RunId>> {
    let mut narrowest: Option<Vec<RunId>> = None;
    for term in terms {
        let texts: Option<Vec<&str>> = match term {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => match (left.as_ref(), right.as_ref()) {
                (Expr::Column(column), literal) | (literal, Expr::Column(column))
                    if column.name == RUN_ID =>
                {
                    text_literal(literal).map(|text| vec![text])
                }
                _ => None,
            },
            Expr::InList(in_list) if !in_list.negated => match in_list.expr.as_ref() {
                Expr::Column(column) if column.name == RUN_ID => in_list
                    .list
                    .iter()
                    .map(text_literal)
                    .collect::<Option<Vec<&str>>>(),
                _ => None,
            },
            _ => None,
        };
        let Some(texts) = texts else {
            continue;
        };
        let ids: Vec<RunId> = texts
            .into_iter()
            .filter_map(|text| {
                RunId::parse(text)
                    .ok()
                    .filter(|run_id| run_id.to_string() == text)
            })
            .collect();
        if narrowest
            .as_ref()
            .is_none_or(|known| ids.len() < known.len())
        {
            narrowest = Some(ids);
        }
    }
    narrowest
}

/// The text of a string literal.
fn text_literal(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(ScalarValue::Utf8(Some(text)), _)
        | Expr::Literal(ScalarValue::LargeUtf8(Some(text)), _)
        | Expr::Literal(ScalarValue::Utf8View(Some(text)), _) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Run;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    fn catalog(runs_per_experiment: &[usize]) -> Arc<CatalogState> {
        let mut state = CatalogState::new("file:///a", 1);
        for (experiment, count) in runs_per_experiment.iter().enumerate() {
            for n in 0..*count {
                state.insert_run(Run::for_test(
                    RunId::new_random(),
                    ExperimentId::new(experiment as u64 + 1),
                    &format!("r{n}"),
                    n as i64,
                ));
            }
        }
        Arc::new(state)
    }

    /// The runs DataFusion itself keeps with `filter`, over a table of
    /// every run's ids.
    async fn oracle(context: &SessionContext, filter: &str) -> HashSet<RunId> {
        let batches = context
            .sql(&format!("SELECT run_id FROM ids WHERE {filter}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|batch| {
                let ids = batch.column(0).as_string::<i32>().clone();
                (0..ids.len())
                    .map(move |row| RunId::parse(ids.value(row)).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn selections_match_what_datafusion_keeps() {
        let catalog = catalog(&[40, 3, 70_000]);
        let schema = Arc::new(Schema::new(vec![
            Field::new(EXPERIMENT_ID, DataType::Utf8, false),
            Field::new(RUN_ID, DataType::Utf8, false),
        ]));
        let mut rows: Vec<(ExperimentId, RunId)> = catalog
            .runs()
            .map(|run| (run.experiment_id, run.run_id))
            .collect();
        rows.sort();
        let table = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|(experiment, _)| experiment.to_string()),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|(_, run)| run.to_string()),
                )),
            ],
        )
        .unwrap();
        let context = SessionContext::new();
        context
            .register_table(
                "ids",
                Arc::new(MemTable::try_new(Arc::clone(&schema), vec![vec![table]]).unwrap()),
            )
            .unwrap();
        let of = |experiment: u64, index: usize| {
            catalog
                .runs_of(ExperimentId::new(experiment))
                .nth(index)
                .unwrap()
                .run_id
                .to_string()
        };
        let (a, b, c) = (of(1, 0), of(2, 1), of(3, 5));
        let filters = [
            "experiment_id = '1'".to_string(),
            "experiment_id IN ('2', '3') AND experiment_id <> '3'".to_string(),
            "experiment_id > '1'".to_string(),
            format!("run_id = '{a}'"),
            format!("'{b}' = run_id"),
            format!(
                "run_id IN ('{a}', '{c}', 'not-a-run', '{}')",
                b.to_uppercase()
            ),
            format!("run_id = '{}'", a.to_uppercase()),
            format!("experiment_id = '2' AND run_id = '{a}'"),
            format!("experiment_id = '1' OR run_id = '{c}'"),
            format!("experiment_id = '3' AND run_id NOT IN ('{c}')"),
            "run_id LIKE 'a%' AND experiment_id <> '3'".to_string(),
            "experiment_id = '9'".to_string(),
        ];
        let runs = RunList::from_catalog(Arc::clone(&catalog));
        for filter in &filters {
            let expr = context
                .parse_sql_expr(filter, &DFSchema::try_from(Arc::clone(&schema)).unwrap())
                .unwrap();
            let selected = select_runs(
                &context.state(),
                &runs,
                &[expr],
                (&DataType::Utf8, &DataType::Utf8),
            )
            .unwrap()
            .unwrap();
            assert_eq!(selected, oracle(&context, filter).await, "{filter}");
        }

        // No run filter: every run, or none named when the list is open.
        let none = select_runs(
            &context.state(),
            &runs,
            &[],
            (&DataType::Utf8, &DataType::Utf8),
        )
        .unwrap();
        assert!(none.is_none());
        let all = select_runs(
            &context.state(),
            &runs.clone().closed(),
            &[],
            (&DataType::Utf8, &DataType::Utf8),
        )
        .unwrap()
        .unwrap();
        assert_eq!(all.len(), 70_043);
    }
}
