//! The `metrics` table: every point (`experiment_id`, `run_id`, `key`,
//! `step`, `timestamp`, `value`), read from the persisted Parquet files and
//! a snapshot of the in-memory buffers.
//!
//! Scanning it:
//!
//! 1. filters on `experiment_id` / `run_id` choose the runs (whole
//!    directories are skipped before any file is opened, and only the
//!    chosen runs' buffers are copied);
//! 2. the engine captures those runs' points, each acknowledged point
//!    exactly once, in a file or in a buffer copy;
//! 3. files are read by `MetricFileScanExec`, which applies `key` and
//!    `step` filters exactly (`ScanFilter`): the rows a file can
//!    contribute come from its footer (key row ranges, steps per block),
//!    only those rows of the projected columns are decoded; buffer copies
//!    are filtered the same way and read from memory; `LIMIT` stops both
//!    early. Other filters are checked by DataFusion above the scan.
//!
//! `EXPLAIN` shows the chosen files and the filter the scan applies
//! (`pruning_predicate`); `EXPLAIN ANALYZE` counts the rows pruned and
//! read. The table's file
//! handles are held until the query ends, so compaction cannot delete a
//! file mid-read.

use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;

use super::metric_scan::{MetricFileScanExec, ScanFile, constant_id};
use super::run_filter::{self, EXPERIMENT_ID, RUN_ID, RunList};
use super::scan_filter::ScanFilter;
use crate::engine::Engine;
use crate::ingest::rewinds::RewoundPoints;
use crate::ingest::{BYTES_PER_POINT, RunPoints};
use crate::storage::PersistedFile;
use crate::storage::schema::metric_file_schema;

/// The type of the `experiment_id` and `run_id` columns: string views.
/// Every row of a file (or buffer batch) shares one value, which a view
/// array stores once (16 bytes of view per row), and grouping and joining
/// on views is fast.
fn id_type() -> DataType {
    DataType::Utf8View
}

/// The partition columns, in table order after the file columns.
fn partition_fields() -> Vec<Arc<Field>> {
    vec![
        Arc::new(Field::new(EXPERIMENT_ID, id_type(), false)),
        Arc::new(Field::new(RUN_ID, id_type(), false)),
    ]
}

/// Schema of `metrics`: the file columns (`key`, `step`, `timestamp`,
/// `value`) followed by `experiment_id` and `run_id`.
pub fn metrics_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        let mut fields: Vec<Arc<Field>> = metric_file_schema().fields().iter().cloned().collect();
        fields.extend(partition_fields());
        Arc::new(Schema::new(fields))
    }))
}

/// The `metrics` table of one query (the points reads show), or
/// `rewound_metrics` (the points a rewind hid, kept until `stepstore gc`).
pub struct MetricsTable {
    engine: Arc<Engine>,
    runs: RunList,
    /// Which points: those shown (`metrics`) or only the hidden ones.
    rewound: RewoundPoints,
    /// Files read by this query's scans, held until the query ends.
    held_files: Mutex<Vec<Arc<PersistedFile>>>,
    /// Memory of the buffer copies, counted against the query's limit
    /// until the query ends.
    held_memory: Mutex<Vec<MemoryReservation>>,
}

impl MetricsTable {
    /// The table over `engine`'s metrics; `runs` are the runs the query
    /// may choose from.
    pub(crate) fn new(engine: Arc<Engine>, runs: RunList, rewound: RewoundPoints) -> Self {
        MetricsTable {
            engine,
            runs,
            rewound,
            held_files: Mutex::new(Vec::new()),
            held_memory: Mutex::new(Vec::new()),
        }
    }

    fn hold(&self, points: &[RunPoints]) {
        let mut held = self
            .held_files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for run in points {
            held.extend(run.files.iter().cloned());
        }
    }
}

impl std::fmt::Debug for MetricsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsTable")
            .field("runs", &self.runs.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TableProvider for MetricsTable {
    fn schema(&self) -> SchemaRef {
        metrics_schema()
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
            .map(|filter| {
                if run_filter::is_run_filter(filter) {
                    // Applied exactly by choosing runs.
                    TableProviderFilterPushDown::Exact
                } else if ScanFilter::handles(filter) {
                    // Key and step filters: applied exactly by the scan
                    // (row ranges from the file footers, then a check of
                    // the rows in partly matching blocks).
                    TableProviderFilterPushDown::Exact
                } else {
                    // Checked by DataFusion on every row.
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = metrics_schema();
        let id_type = id_type();
        let selection = run_filter::select_runs(state, &self.runs, filters, (&id_type, &id_type))?;
        let projected = Arc::new(schema.project(projection.map_or(
            &(0..schema.fields().len()).collect::<Vec<_>>(),
            |projection| projection,
        ))?);
        if selection.as_ref().is_some_and(|runs| runs.is_empty()) {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let mut points = self
            .engine
            .metric_points(selection.map(Arc::new))
            .await
            .map_err(|error| DataFusionError::External(Box::new(error)))?;
        points.sort_by_key(|run| (run.experiment_id, run.run_id));
        self.hold(&points);
        // Buffer copies count against the query's memory limit.
        let buffered_rows: usize = points.iter().map(RunPoints::buffered_rows).sum();
        if buffered_rows > 0 {
            let reservation = MemoryConsumer::new("metrics buffer snapshot")
                .register(&state.runtime_env().memory_pool);
            reservation.try_grow(buffered_rows.saturating_mul(BYTES_PER_POINT as usize))?;
            self.held_memory
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(reservation);
        }
        tracing::debug!(
            runs_known = self.runs.len(),
            runs_read = points.len(),
            files = points.iter().map(|run| run.files.len()).sum::<usize>(),
            buffered_rows,
            "metrics scan"
        );

        let partitions = state.config().target_partitions().max(1);
        let batch_size = state.config().batch_size().max(1);
        let filter = ScanFilter::from_filters(filters);
        if filter.is_nothing() {
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        let projection: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if let Some(files) =
            self.file_scan(state, &points, projection.clone(), filter.clone(), limit)?
        {
            inputs.push(files);
        }
        let buffered =
            buffered_partitions(&mut points, partitions, batch_size, &filter, self.rewound)?;
        if buffered.iter().any(|partition| !partition.is_empty()) {
            let memory =
                MemorySourceConfig::try_new(&buffered, schema, Some(projection))?.with_limit(limit);
            inputs.push(DataSourceExec::from_data_source(memory));
        }
        match inputs.len() {
            0 => Ok(Arc::new(EmptyExec::new(projected))),
            1 => Ok(inputs.remove(0)),
            _ => UnionExec::try_new(inputs),
        }
    }
}

impl MetricsTable {
    /// The scan of the chosen runs' files, if there are any.
    fn file_scan(
        &self,
        state: &dyn Session,
        points: &[RunPoints],
        projection: Vec<usize>,
        filter: ScanFilter,
        limit: Option<usize>,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let mut files: Vec<(u64, ScanFile)> = Vec::new();
        for run in points {
            let experiment_id = run.experiment_id.to_string();
            let run_id = run.run_id.to_string();
            for (file, cap) in run.files.iter().zip(&run.file_caps) {
                let Some(steps) = self.rewound.steps(*cap) else {
                    continue;
                };
                files.push((
                    file.bytes(),
                    ScanFile {
                        file: Arc::clone(file),
                        experiment_id: experiment_id.clone(),
                        run_id: run_id.clone(),
                        steps,
                    },
                ));
            }
        }
        if files.is_empty() {
            return Ok(None);
        }
        let groups = balance_files(files, state.config().target_partitions().max(1));
        let scan = MetricFileScanExec::new(
            groups,
            metrics_schema(),
            projection,
            filter,
            limit,
            state.config().batch_size(),
        )?;
        Ok(Some(Arc::new(scan)))
    }
}

/// Spreads files over `partitions` groups of about equal bytes (largest
/// first, each to the lightest group).
fn balance_files(mut files: Vec<(u64, ScanFile)>, partitions: usize) -> Vec<Vec<ScanFile>> {
    files.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    let mut groups: Vec<(u64, Vec<ScanFile>)> = (0..partitions.min(files.len()))
        .map(|_| (0, Vec::new()))
        .collect();
    for (bytes, file) in files {
        if let Some(lightest) = groups.iter_mut().min_by_key(|(total, _)| *total) {
            lightest.0 += bytes;
            lightest.1.push(file);
        }
    }
    groups.into_iter().map(|(_, files)| files).collect()
}

/// The buffered points of the chosen runs as `metrics` batches of at most
/// `batch_size` rows, spread over `partitions` partitions.
fn buffered_partitions(
    points: &mut [RunPoints],
    partitions: usize,
    batch_size: usize,
    filter: &ScanFilter,
    rewound: RewoundPoints,
) -> DfResult<Vec<Vec<RecordBatch>>> {
    let schema = metrics_schema();
    let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
    let mut next = 0;
    for run in points.iter_mut() {
        if run.buffered_rows() == 0 {
            continue;
        }
        let experiment = run.experiment_id.to_string();
        let run_id = run.run_id.to_string();
        for batch in run
            .take_buffered_batches(rewound)
            .map_err(|error| DataFusionError::External(Box::new(error)))?
        {
            // The filters the scan applies exactly apply to buffers too.
            let batch = filter.filter_batch(batch, true, true)?;
            let mut offset = 0;
            while offset < batch.num_rows() {
                let rows = batch_size.min(batch.num_rows() - offset);
                let slice = batch.slice(offset, rows);
                let mut columns: Vec<ArrayRef> = slice.columns().to_vec();
                columns.push(constant_id(&experiment, rows)?);
                columns.push(constant_id(&run_id, rows)?);
                out[next % partitions].push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
                next += 1;
                offset += rows;
            }
        }
    }
    Ok(out)
}
