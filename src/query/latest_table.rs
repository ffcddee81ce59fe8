//! The `latest_metrics` table: one row per run and key with the latest
//! point (greatest step, then greatest timestamp), the smallest and
//! greatest value (NaN ignored unless every value is NaN) and the number of
//! points.
//!
//! It is answered from the per-key summaries the engine keeps for every
//! run (merged from file footers and updated as points arrive), so it never
//! reads a metric file and always counts every acknowledged point.
//! `experiment_id` / `run_id` filters choose the runs first; rows are built
//! in batches, other filters on its columns (`key = 'loss'`) drop rows as
//! they are built, and the rows kept count against the query's memory
//! limit.

use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::run_filter::{self, EXPERIMENT_ID, RUN_ID, RunList};
use super::run_tables::{RowFilter, filtered_batches, hold_memory, row_filter_pushdown};
use crate::engine::Engine;
use crate::ingest::RunSummaries;
use crate::storage::schema::TIMEZONE;

/// Schema of `latest_metrics`.
pub fn latest_metrics_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(EXPERIMENT_ID, DataType::Utf8, false),
            Field::new(RUN_ID, DataType::Utf8, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("step", DataType::Int64, false),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Millisecond, Some(TIMEZONE.into())),
                false,
            ),
            Field::new("value", DataType::Float64, false),
            Field::new("min_value", DataType::Float64, false),
            Field::new("max_value", DataType::Float64, false),
            Field::new("count", DataType::Int64, false),
        ]))
    }))
}

/// The `latest_metrics` table of one query.
pub struct LatestMetricsTable {
    engine: Arc<Engine>,
    runs: RunList,
    /// Memory of the rows built, counted until the query ends.
    held_memory: Mutex<Vec<MemoryReservation>>,
}

impl LatestMetricsTable {
    /// The table over `engine`'s summaries; `runs` are the runs the query
    /// may choose from.
    pub(crate) fn new(engine: Arc<Engine>, runs: RunList) -> Self {
        LatestMetricsTable {
            engine,
            runs,
            held_memory: Mutex::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for LatestMetricsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatestMetricsTable")
            .field("runs", &self.runs.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for LatestMetricsTable {
    fn schema(&self) -> SchemaRef {
        latest_metrics_schema()
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
        let selection = run_filter::select_runs(
            state,
            &self.runs,
            filters,
            (&DataType::Utf8, &DataType::Utf8),
        )?;
        let mut summaries = match &selection {
            Some(runs) if runs.is_empty() => Vec::new(),
            _ => self
                .engine
                .metric_summaries(selection.map(Arc::new))
                .await
                .map_err(|error| DataFusionError::External(Box::new(error)))?,
        };
        summaries.sort_by_key(|run| (run.experiment_id, run.run_id));
        let row_filter = RowFilter::new(state, &latest_metrics_schema(), filters)?;
        let batches = filtered_batches(
            state,
            &summaries,
            |run| run.keys.len(),
            summaries_batch,
            &row_filter,
        )?;
        hold_memory(&self.held_memory, state, "latest_metrics", &batches)?;
        let memory =
            MemorySourceConfig::try_new(&[batches], latest_metrics_schema(), projection.cloned())?
                .with_limit(limit);
        Ok(datafusion::datasource::source::DataSourceExec::from_data_source(memory))
    }
}

fn summaries_batch(runs: &[RunSummaries]) -> DfResult<RecordBatch> {
    let rows: usize = runs.iter().map(|run| run.keys.len()).sum();
    let mut experiment_ids = StringBuilder::with_capacity(rows, rows * 4);
    let mut run_ids = StringBuilder::with_capacity(rows, rows * 32);
    let mut keys = StringBuilder::with_capacity(rows, rows * 16);
    let mut steps = Int64Builder::with_capacity(rows);
    let mut timestamps = TimestampMillisecondBuilder::with_capacity(rows).with_timezone(TIMEZONE);
    let mut values = Float64Builder::with_capacity(rows);
    let mut mins = Float64Builder::with_capacity(rows);
    let mut maxes = Float64Builder::with_capacity(rows);
    let mut counts = Int64Builder::with_capacity(rows);
    for run in runs {
        let experiment_id = run.experiment_id.to_string();
        let run_id = run.run_id.to_string();
        for (key, summary) in &run.keys {
            experiment_ids.append_value(&experiment_id);
            run_ids.append_value(&run_id);
            keys.append_value(key);
            steps.append_value(summary.latest_step);
            timestamps.append_value(summary.latest_timestamp);
            values.append_value(summary.latest_value);
            mins.append_value(summary.min_value);
            maxes.append_value(summary.max_value);
            counts.append_value(i64::try_from(summary.count).unwrap_or(i64::MAX));
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(experiment_ids.finish()),
        Arc::new(run_ids.finish()),
        Arc::new(keys.finish()),
        Arc::new(steps.finish()),
        Arc::new(timestamps.finish()),
        Arc::new(values.finish()),
        Arc::new(mins.finish()),
        Arc::new(maxes.finish()),
        Arc::new(counts.finish()),
    ];
    Ok(RecordBatch::try_new(latest_metrics_schema(), columns)?)
}
