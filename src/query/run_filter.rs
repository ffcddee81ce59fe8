//! Directory pruning: which runs a query's `experiment_id` / `run_id`
//! filters select, decided before any file is opened or buffer copied.
//!
//! Filters that refer only to those two columns are evaluated, exactly as
//! DataFusion would, on a small batch holding one row per known run; the
//! runs whose row passes every such filter are the ones read.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::utils::conjunction;

use crate::catalog::CatalogState;
use crate::model::{ExperimentId, RunId};

/// Name of the experiment id column.
pub(crate) const EXPERIMENT_ID: &str = "experiment_id";
/// Name of the run id column.
pub(crate) const RUN_ID: &str = "run_id";

/// Rows per evaluation batch (below `u16::MAX`, so dictionary-typed id
/// columns never overflow their keys).
const CHUNK_ROWS: usize = 32 * 1024;

/// The runs a query may read, from the catalog copy it started with.
#[derive(Clone, Debug)]
pub(crate) struct RunList {
    runs: Arc<Vec<(ExperimentId, RunId)>>,
    /// Whether these are all the runs the query may read (a token limited
    /// to experiments), rather than the runs known when it started (later
    /// runs readable too).
    closed: bool,
}

impl RunList {
    /// Every run of the catalog.
    pub(crate) fn from_catalog(catalog: &CatalogState) -> Self {
        let mut runs: Vec<(ExperimentId, RunId)> = catalog
            .runs()
            .map(|run| (run.experiment_id, run.run_id))
            .collect();
        runs.sort();
        RunList {
            runs: Arc::new(runs),
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
        self.runs.len()
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
    let run_filters: Vec<Expr> = filters
        .iter()
        .filter(|filter| is_run_filter(filter))
        .cloned()
        .collect();
    let Some(predicate) = conjunction(run_filters) else {
        return Ok(runs
            .closed
            .then(|| runs.runs.iter().map(|(_, run_id)| *run_id).collect()));
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new(EXPERIMENT_ID, id_types.0.clone(), false),
        Field::new(RUN_ID, id_types.1.clone(), false),
    ]));
    let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
    let predicate = state.create_physical_expr(predicate, &df_schema)?;
    let mut selected = HashSet::new();
    for chunk in runs.runs.chunks(CHUNK_ROWS) {
        let experiments: ArrayRef = Arc::new(StringArray::from_iter_values(
            chunk.iter().map(|(experiment, _)| experiment.to_string()),
        ));
        let run_ids: ArrayRef = Arc::new(StringArray::from_iter_values(
            chunk.iter().map(|(_, run)| run.to_string()),
        ));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![cast(&experiments, id_types.0)?, cast(&run_ids, id_types.1)?],
        )?;
        let verdict = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
        let verdict = cast(&verdict, &DataType::Boolean)?;
        let verdict = verdict.as_boolean();
        for (row, (_, run_id)) in chunk.iter().enumerate() {
            if verdict.is_valid(row) && verdict.value(row) {
                selected.insert(*run_id);
            }
        }
    }
    Ok(Some(selected))
}
