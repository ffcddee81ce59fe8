//! The `runs`, `params` and `tags` tables: built when a scan asks for
//! them, from the catalog copy the query started with, for the runs its
//! `experiment_id` / `run_id` filters choose ([`run_filter`]).
//!
//! A query about one experiment builds that experiment's rows only, so its
//! cost and memory do not grow with the rest of the history. Rows are
//! built in batches of the session's batch size, and the query's other
//! filters on the table's own columns (`key = 'lr'`, `status = …`) are
//! applied to each batch as it is built ([`RowFilter`]; DataFusion applies
//! them again), so only the rows that can match are held. The rows kept
//! count against the query's memory limit until it ends.

use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use super::catalog_tables::{run_key_value_schema, run_key_values_batch, runs_batch, runs_schema};
use super::run_filter::{self, RunList};
use crate::model::Run;

/// Which of the run tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunTableKind {
    /// `runs`: one row per run.
    Runs,
    /// `params`: one row per run and param.
    Params,
    /// `tags`: one row per run and tag.
    Tags,
}

impl RunTableKind {
    /// The table's name in SQL.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RunTableKind::Runs => "runs",
            RunTableKind::Params => "params",
            RunTableKind::Tags => "tags",
        }
    }

    fn schema(self) -> SchemaRef {
        match self {
            RunTableKind::Runs => runs_schema(),
            RunTableKind::Params | RunTableKind::Tags => run_key_value_schema(),
        }
    }
}

/// One of the run tables of one query.
pub(crate) struct RunCatalogTable {
    kind: RunTableKind,
    runs: RunList,
    /// Memory of the rows built, counted until the query ends.
    held_memory: Mutex<Vec<MemoryReservation>>,
}

impl RunCatalogTable {
    /// The `kind` table over `runs`.
    pub(crate) fn new(kind: RunTableKind, runs: RunList) -> Self {
        RunCatalogTable {
            kind,
            runs,
            held_memory: Mutex::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for RunCatalogTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCatalogTable")
            .field("kind", &self.kind)
            .field("runs", &self.runs.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for RunCatalogTable {
    fn schema(&self) -> SchemaRef {
        self.kind.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| row_filter_pushdown(filter))
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let id_type = arrow::datatypes::DataType::Utf8;
        let selection = run_filter::select_runs(state, &self.runs, filters, (&id_type, &id_type))?;
        let catalog = self.runs.catalog();
        let mut runs: Vec<&Run> = match &selection {
            Some(selected) => selected
                .iter()
                .filter_map(|run_id| catalog.run(*run_id))
                .collect(),
            None => catalog.runs().map(Arc::as_ref).collect(),
        };
        runs.sort_by(|a, b| {
            (a.experiment_id, a.start_time, a.run_id).cmp(&(
                b.experiment_id,
                b.start_time,
                b.run_id,
            ))
        });
        let row_filter = RowFilter::new(state, &self.kind.schema(), filters)?;
        let kind = self.kind;
        let batches = filtered_batches(
            state,
            &runs,
            |run| match kind {
                RunTableKind::Runs => 1,
                RunTableKind::Params => run.params.len(),
                RunTableKind::Tags => run.tags.len(),
            },
            |chunk| match kind {
                RunTableKind::Runs => runs_batch(chunk),
                RunTableKind::Params => run_key_values_batch(chunk, |run| run.params.iter()),
                RunTableKind::Tags => run_key_values_batch(chunk, |run| run.tags.iter()),
            },
            &row_filter,
        )?;
        let bytes = hold_memory(&self.held_memory, state, self.kind.name(), &batches)?;
        tracing::debug!(
            table = self.kind.name(),
            runs_known = self.runs.len(),
            runs_read = runs.len(),
            rows_kept = batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            bytes,
            "catalog table scan"
        );
        let memory =
            MemorySourceConfig::try_new(&[batches], self.kind.schema(), projection.cloned())?
                .with_limit(limit);
        Ok(datafusion::datasource::source::DataSourceExec::from_data_source(memory))
    }
}

/// The rows of `items` as batches of about the session's batch size
/// (`rows_of` counts an item's rows, `build` makes a batch of a run of
/// items), each filtered by `row_filter`; empty batches are left out.
pub(crate) fn filtered_batches<T>(
    state: &dyn Session,
    items: &[T],
    rows_of: impl Fn(&T) -> usize,
    build: impl Fn(&[T]) -> DfResult<RecordBatch>,
    row_filter: &RowFilter,
) -> DfResult<Vec<RecordBatch>> {
    let batch_rows = state.config().batch_size().max(1);
    let mut batches = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let mut end = start;
        let mut rows = 0;
        while end < items.len() && (rows < batch_rows || end == start) {
            rows += rows_of(&items[end]);
            end += 1;
        }
        let batch = row_filter.apply(build(&items[start..end])?)?;
        if batch.num_rows() > 0 {
            batches.push(batch);
        }
        start = end;
    }
    Ok(batches)
}

/// Counts `batches` against the query's memory limit until the query ends
/// (the reservation is kept in `held`); returns their bytes.
pub(crate) fn hold_memory(
    held: &Mutex<Vec<MemoryReservation>>,
    state: &dyn Session,
    table: &str,
    batches: &[RecordBatch],
) -> DfResult<usize> {
    let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let reservation =
        MemoryConsumer::new(format!("{table} table")).register(&state.runtime_env().memory_pool);
    reservation.try_grow(bytes)?;
    held.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(reservation);
    Ok(bytes)
}

/// How a table built from the catalog or the summaries takes a filter:
/// run filters exactly (they choose the runs), other filters that refer
/// to the table's columns and are not volatile inexactly (applied to each
/// batch as built, and again by DataFusion).
pub(crate) fn row_filter_pushdown(filter: &Expr) -> TableProviderFilterPushDown {
    if run_filter::is_run_filter(filter) {
        TableProviderFilterPushDown::Exact
    } else if !filter.is_volatile() && !filter.column_refs().is_empty() {
        TableProviderFilterPushDown::Inexact
    } else {
        TableProviderFilterPushDown::Unsupported
    }
}

/// The filters of a scan other than run filters, applied to the batches it
/// builds so that rows no filter can keep are dropped before they are held.
pub(crate) struct RowFilter {
    predicate: Option<Arc<dyn PhysicalExpr>>,
}

impl RowFilter {
    /// The conjunction of `filters` that are not run filters, over
    /// `schema`.
    pub(crate) fn new(state: &dyn Session, schema: &SchemaRef, filters: &[Expr]) -> DfResult<Self> {
        let rest = filters
            .iter()
            .filter(|filter| row_filter_pushdown(filter) == TableProviderFilterPushDown::Inexact)
            .cloned();
        let predicate = match conjunction(rest) {
            Some(predicate) => {
                let df_schema = DFSchema::try_from(Arc::clone(schema))?;
                Some(state.create_physical_expr(predicate, &df_schema)?)
            }
            None => None,
        };
        Ok(RowFilter { predicate })
    }

    /// The rows of `batch` the filters keep (null counts as not kept).
    pub(crate) fn apply(&self, batch: RecordBatch) -> DfResult<RecordBatch> {
        let Some(predicate) = &self.predicate else {
            return Ok(batch);
        };
        let verdict = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
        let verdict = arrow::compute::cast(&verdict, &DataType::Boolean)?;
        Ok(filter_record_batch(&batch, verdict.as_boolean())?)
    }
}
