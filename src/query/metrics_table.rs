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
//! 3. files are read by DataFusion's Parquet scan (byte ranges straight
//!    from the local files, [`super::local_files`]), to which DataFusion's
//!    filter pushdown hands the remaining filters: `key` and `step` prune
//!    row groups by statistics and pages by the page index, then filter
//!    rows while decoding; buffer copies are read from memory; `LIMIT`
//!    stops both early.
//!
//! `EXPLAIN` shows the chosen files and the pruning predicate; `EXPLAIN
//! ANALYZE` counts the row groups and pages pruned. The table's file
//! handles are held until the query ends, so compaction cannot delete a
//! file mid-read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{ArrayRef, RecordBatch, StringViewBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;

use super::local_files::LocalFileReaderFactory;
use super::run_filter::{self, EXPERIMENT_ID, RUN_ID, RunList};
use crate::engine::Engine;
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

/// The `metrics` table of one query.
pub struct MetricsTable {
    engine: Arc<Engine>,
    runs: RunList,
    /// Files read by this query's scans, held until the query ends.
    held_files: Mutex<Vec<Arc<PersistedFile>>>,
    /// Memory of the buffer copies, counted against the query's limit
    /// until the query ends.
    held_memory: Mutex<Vec<MemoryReservation>>,
}

impl MetricsTable {
    /// The table over `engine`'s metrics; `runs` are the runs the query
    /// may choose from.
    pub(crate) fn new(engine: Arc<Engine>, runs: RunList) -> Self {
        MetricsTable {
            engine,
            runs,
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
                } else {
                    // Used to prune files, row groups and pages; DataFusion
                    // still checks every row.
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
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if let Some(files) = self.file_scan(state, &points, projection, limit)? {
            inputs.push(files);
        }
        let buffered = buffered_partitions(&mut points, partitions, batch_size)?;
        if buffered.iter().any(|partition| !partition.is_empty()) {
            let memory = MemorySourceConfig::try_new(&buffered, schema, projection.cloned())?
                .with_limit(limit);
            inputs.push(DataSourceExec::from_data_source(memory));
        }
        match inputs.len() {
            0 => Ok(Arc::new(EmptyExec::new(projected))),
            _ => UnionExec::try_new(inputs),
        }
    }
}

impl MetricsTable {
    /// The Parquet scan of the chosen runs' files, if there are any.
    fn file_scan(
        &self,
        state: &dyn Session,
        points: &[RunPoints],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let mut files: Vec<(u64, PartitionedFile)> = Vec::new();
        let mut paths = HashMap::new();
        for run in points {
            let values = vec![
                ScalarValue::Utf8View(Some(run.experiment_id.to_string())),
                ScalarValue::Utf8View(Some(run.run_id.to_string())),
            ];
            for file in &run.files {
                let path = std::path::absolute(file.path())
                    .map_err(|error| DataFusionError::External(Box::new(error)))?;
                let Some(path) = path.to_str() else {
                    return Err(DataFusionError::Execution(format!(
                        "metric file path {} is not UTF-8",
                        path.display()
                    )));
                };
                let partitioned =
                    PartitionedFile::new(path, file.bytes()).with_partition_values(values.clone());
                paths.insert(
                    partitioned.object_meta.location.clone(),
                    std::path::PathBuf::from(path),
                );
                files.push((file.bytes(), partitioned));
            }
        }
        if files.is_empty() {
            return Ok(None);
        }
        let groups = balance_files(files, state.config().target_partitions().max(1));

        let table_schema = TableSchema::builder(metric_file_schema())
            .with_table_partition_cols(partition_fields())
            .build();
        let store_url = ObjectStoreUrl::local_filesystem();
        let store = state.runtime_env().object_store(&store_url)?;
        let metadata_cache = state.runtime_env().cache_manager.get_file_metadata_cache();
        // Byte ranges are read from the local files directly; footers go
        // through DataFusion's cache, shared by all queries.
        let footers = Arc::new(CachedParquetFileReaderFactory::new(store, metadata_cache));
        let source = ParquetSource::new(table_schema)
            .with_enable_page_index(true)
            .with_pushdown_filters(true)
            .with_reorder_filters(true)
            // Metric files have no bloom filters.
            .with_bloom_filter_on_read(false)
            .with_parquet_file_reader_factory(Arc::new(LocalFileReaderFactory::new(
                paths, footers,
            )));
        // Run filters are applied by choosing runs. DataFusion's filter
        // pushdown hands the remaining filters (key, step, ...) to this
        // source, which uses them to prune row groups (statistics) and
        // pages (page index) and to filter rows while decoding; `EXPLAIN`
        // shows them as `predicate` and `pruning_predicate`.
        let config = FileScanConfigBuilder::new(store_url, Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(Some(DataSourceExec::from_data_source(config)))
    }
}

/// Spreads files over `partitions` groups of about equal bytes (largest
/// first, each to the lightest group).
fn balance_files(mut files: Vec<(u64, PartitionedFile)>, partitions: usize) -> Vec<FileGroup> {
    files.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..partitions.min(files.len()))
        .map(|_| (0, Vec::new()))
        .collect();
    for (bytes, file) in files {
        if let Some(lightest) = groups.iter_mut().min_by_key(|(total, _)| *total) {
            lightest.0 += bytes;
            lightest.1.push(file);
        }
    }
    groups
        .into_iter()
        .map(|(_, files)| FileGroup::new(files))
        .collect()
}

/// The buffered points of the chosen runs as `metrics` batches of at most
/// `batch_size` rows, spread over `partitions` partitions.
fn buffered_partitions(
    points: &mut [RunPoints],
    partitions: usize,
    batch_size: usize,
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
        for batch in run.take_buffered_batches()? {
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

/// A string view column holding `value` in every one of `rows` rows
/// (stored once).
fn constant_id(value: &str, rows: usize) -> DfResult<ArrayRef> {
    let mut builder = StringViewBuilder::with_capacity(rows);
    builder.try_append_value_n(value, rows)?;
    Ok(Arc::new(builder.finish()))
}
