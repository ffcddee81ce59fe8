//! The scan of persisted metric files for the `metrics` table.
//!
//! DataFusion's generic Parquet scan sets every file up anew (pruning
//! predicates, page index evaluation, a row filter that decodes the `key`
//! dictionary and compares it row by row), which dominates queries that
//! read a few thousand rows from each of a thousand files. Metric files
//! are sorted by `(key, step, timestamp)` and their footers say where each
//! key's rows start and which steps every block of rows holds, so
//! [`MetricFileScanExec`] computes the rows a file can contribute from the
//! footer alone ([`ScanFilter`]), reads just those rows of just the
//! projected columns (whole column chunks, or the span of pages holding
//! the selected rows, in one read each), checks the step of rows in
//! blocks only partly inside the step range, and adds the constant
//! `experiment_id` and `run_id` columns.
//!
//! Files read from the object store are opened ahead of the scan, on a
//! few threads per partition, so their fetches overlap each other and the
//! decoding; local files are opened in turn.
//!
//! Files without block aggregates (written before they existed) are read
//! whole and filtered row by row. `EXPLAIN` shows the files and the
//! filter; `EXPLAIN ANALYZE` counts the rows pruned and read.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringViewBuilder};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult, Statistics};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use super::scan_filter::ScanFilter;
use crate::storage::row_plan::push_range;
use crate::storage::schema::{KEY_COLUMN, file_column};
use crate::storage::{PersistedFile, RowRequest, SelectedRows, StepFilter, SummaryRows};

/// One file to scan and the run it belongs to.
#[derive(Clone, Debug)]
pub(crate) struct ScanFile {
    /// The file.
    pub file: Arc<PersistedFile>,
    /// Its `experiment_id`.
    pub experiment_id: String,
    /// Its `run_id`.
    pub run_id: String,
    /// The steps of the file the scan may return (a rewind hides the rest
    /// from `metrics`; `rewound_metrics` returns only those).
    pub steps: (i64, i64),
}

/// Reads metric files; see the module documentation.
#[derive(Debug)]
pub(crate) struct MetricFileScanExec {
    /// Files of each output partition.
    groups: Vec<Vec<ScanFile>>,
    /// The table schema (file columns, then `experiment_id`, `run_id`).
    table_schema: SchemaRef,
    /// Table columns to output, in order.
    projection: Vec<usize>,
    filter: Arc<ScanFilter>,
    /// Rows each partition may stop after.
    limit: Option<usize>,
    batch_size: usize,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl MetricFileScanExec {
    /// A scan of `groups` (one partition each) over the table
    /// `table_schema` (whose last two columns are the run's ids).
    pub(crate) fn new(
        groups: Vec<Vec<ScanFile>>,
        table_schema: SchemaRef,
        projection: Vec<usize>,
        filter: ScanFilter,
        limit: Option<usize>,
        batch_size: usize,
    ) -> DfResult<Self> {
        let projected = Arc::new(table_schema.project(&projection)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(groups.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(MetricFileScanExec {
            groups,
            table_schema,
            projection,
            filter: Arc::new(filter),
            limit,
            batch_size: batch_size.max(1),
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for MetricFileScanExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let columns: Vec<&str> = self
            .projection
            .iter()
            .map(|&index| self.table_schema.field(index).name().as_str())
            .collect();
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(
            f,
            "MetricFileScanExec: files={files}, partitions={}, projection=[{}], \
             pruning_predicate={}",
            self.groups.len(),
            columns.join(", "),
            self.filter.describe()
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        const SHOWN: usize = 5;
        let paths: Vec<String> = self
            .groups
            .iter()
            .flatten()
            .take(SHOWN)
            .map(|file| file.file.path().display().to_string())
            .collect();
        write!(f, ", file_groups=[{}", paths.join(", "))?;
        if files > SHOWN {
            write!(f, ", ...")?;
        }
        write!(f, "]")
    }
}

impl ExecutionPlan for MetricFileScanExec {
    fn name(&self) -> &str {
        "MetricFileScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "MetricFileScanExec has no inputs".to_string(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let files = self.groups.get(partition).cloned().unwrap_or_default();
        let schema = Arc::new(self.table_schema.project(&self.projection)?);
        let counter =
            |name: &'static str| MetricBuilder::new(&self.metrics).counter(name, partition);
        let opener = FileOpener {
            table_schema: Arc::clone(&self.table_schema),
            projection: self.projection.clone(),
            filter: Arc::clone(&self.filter),
            batch_size: self.batch_size,
            files_opened: counter("files_opened"),
            rows_pruned: counter("rows_pruned"),
            bytes_scanned: counter("bytes_scanned"),
        };
        let scan = PartitionScan {
            files: PendingFiles::new(files, opener),
            current: None,
            table_schema: Arc::clone(&self.table_schema),
            projection: self.projection.clone(),
            schema: Arc::clone(&schema),
            filter: Arc::clone(&self.filter),
            remaining: self.limit,
            rows_read: counter("rows_read"),
            output_rows: MetricBuilder::new(&self.metrics).output_rows(partition),
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(scan),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn partition_statistics(&self, _partition: Option<usize>) -> DfResult<Arc<Statistics>> {
        Ok(Arc::new(Statistics::new_unknown(&self.schema())))
    }
}

/// Threads opening the files of a partition that reads from the object
/// store, each one file at a time and at most one file ahead of the scan
/// (an opened file holds the bytes of its selected pages): fetches overlap
/// each other and the decoding.
const READ_AHEAD_THREADS: usize = 3;

/// The batches of one partition, file after file.
struct PartitionScan {
    files: PendingFiles,
    current: Option<OpenFile>,
    table_schema: SchemaRef,
    projection: Vec<usize>,
    schema: SchemaRef,
    filter: Arc<ScanFilter>,
    /// Rows still wanted under a `LIMIT`.
    remaining: Option<usize>,
    rows_read: Count,
    output_rows: Count,
}

/// The files of a partition still to scan, opened as the scan reaches
/// them, or ahead of it by a thread when some are read from the object
/// store (fetching the next files then overlaps decoding this one).
enum PendingFiles {
    InTurn {
        files: std::vec::IntoIter<ScanFile>,
        opener: FileOpener,
    },
    /// Thread `i` opens files `i`, `i + n`, `i + 2n`, … of `n`; `turn`
    /// is the thread whose file comes next.
    ReadAhead {
        readers: Vec<std::sync::mpsc::Receiver<DfResult<Option<OpenFile>>>>,
        turn: usize,
    },
}

impl PendingFiles {
    fn new(files: Vec<ScanFile>, opener: FileOpener) -> PendingFiles {
        if !files.iter().any(|file| file.file.is_stored_only()) {
            return PendingFiles::InTurn {
                files: files.into_iter(),
                opener,
            };
        }
        let threads = READ_AHEAD_THREADS.min(files.len());
        let mut readers = Vec::with_capacity(threads);
        for first in 0..threads {
            let (sender, receiver) = std::sync::mpsc::sync_channel(1);
            let ahead = opener.clone();
            let queue: Vec<ScanFile> = files.iter().skip(first).step_by(threads).cloned().collect();
            let spawned = std::thread::Builder::new()
                .name("stepstore-scan-read-ahead".into())
                .spawn(move || {
                    for file in &queue {
                        let opened = ahead.open(file);
                        let failed = opened.is_err();
                        // The scan stopped (a limit, an error, a cancelled
                        // query): nothing more to open.
                        if sender.send(opened).is_err() || failed {
                            return;
                        }
                    }
                });
            if let Err(error) = spawned {
                // The threads started stop at their first send.
                tracing::warn!(%error, "could not start a scan's read-ahead thread; files are opened in turn");
                return PendingFiles::InTurn {
                    files: files.into_iter(),
                    opener,
                };
            }
            readers.push(receiver);
        }
        PendingFiles::ReadAhead { readers, turn: 0 }
    }

    /// The next file opened (`None` inside when no row of it can pass);
    /// `None` when every file is done.
    fn next(&mut self) -> Option<DfResult<Option<OpenFile>>> {
        match self {
            PendingFiles::InTurn { files, opener } => Some(opener.open(&files.next()?)),
            PendingFiles::ReadAhead { readers, turn } => {
                // A thread done means every file is: the next one would
                // have been its.
                let opened = readers.get(*turn)?.recv().ok()?;
                *turn = (*turn + 1) % readers.len();
                Some(opened)
            }
        }
    }
}

/// The reader of the file being scanned.
struct OpenFile {
    reader: SelectedRows,
    /// The run's ids, `batch_size` rows long (sliced per batch).
    experiment_id: ArrayRef,
    run_id: ArrayRef,
    /// Whether rows' keys must be checked (steps are checked while
    /// decoding).
    check_keys: bool,
}

impl Iterator for PartitionScan {
    type Item = DfResult<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.remaining == Some(0) {
                return None;
            }
            let Some(current) = &mut self.current else {
                match self.files.next()? {
                    Ok(opened) => self.current = opened,
                    Err(error) => return Some(Err(error)),
                }
                continue;
            };
            let Some(batch) = current.reader.next() else {
                self.current = None;
                continue;
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => return Some(Err(DataFusionError::External(Box::new(error)))),
            };
            match self.finish_batch(batch) {
                Ok(Some(batch)) => return Some(Ok(batch)),
                Ok(None) => continue,
                Err(error) => return Some(Err(error)),
            }
        }
    }
}

/// What opening a file needs: the scan's columns and filter, and the
/// counters it adds to.
#[derive(Clone)]
struct FileOpener {
    table_schema: SchemaRef,
    projection: Vec<usize>,
    filter: Arc<ScanFilter>,
    batch_size: usize,
    files_opened: Count,
    rows_pruned: Count,
    bytes_scanned: Count,
}

impl FileOpener {
    /// Opens `file` for reading the rows that may pass; `None` when none
    /// can.
    fn open(&self, file: &ScanFile) -> DfResult<Option<OpenFile>> {
        let filter = if file.steps == (i64::MIN, i64::MAX) {
            Arc::clone(&self.filter)
        } else {
            Arc::new(self.filter.within_steps(file.steps.0, file.steps.1))
        };
        if filter.is_nothing() {
            return Ok(None);
        }
        let external =
            |error: crate::storage::StorageError| DataFusionError::External(Box::new(error));
        let footer = file.file.footer().map_err(external)?;
        let metadata = footer.metadata();
        let total_rows = u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0);
        let everything = std::iter::once(0..total_rows).collect::<Vec<_>>();
        // The rows to read, and whether their keys and steps need checking.
        let (ranges, check_keys, check_steps) = match file.file.aggregates() {
            _ if filter.is_everything() => (everything, false, false),
            Some(aggregates) => {
                let mut ranges: Vec<Range<u64>> = Vec::new();
                let mut all_whole = true;
                for key in &aggregates.keys {
                    for (range, whole) in filter.key_rows(key) {
                        all_whole &= whole;
                        push_range(&mut ranges, range);
                    }
                }
                (ranges, false, !all_whole)
            }
            // Files written before block aggregates: key row ranges from
            // the key summaries, when they check out.
            None => match SummaryRows::of(metadata) {
                Some(summaries) => {
                    let mut ranges = Vec::new();
                    for (key, rows, (min_step, max_step)) in summaries.keys() {
                        if filter.allows_key(key) && filter.meets_steps(min_step, max_step) {
                            push_range(&mut ranges, rows);
                        }
                    }
                    (ranges, false, filter.restricts_steps())
                }
                None => (
                    everything,
                    filter.restricts_keys(),
                    filter.restricts_steps(),
                ),
            },
        };
        let selected: u64 = ranges.iter().map(|range| range.end - range.start).sum();
        self.rows_pruned
            .add(usize::try_from(total_rows.saturating_sub(selected)).unwrap_or(usize::MAX));
        if selected == 0 {
            return Ok(None);
        }
        self.files_opened.add(1);

        // File columns to decode: the projected ones and those to check.
        let file_columns = self.table_schema.fields().len() - 2;
        let mut columns: Vec<&'static str> = self
            .projection
            .iter()
            .filter(|&&index| index < file_columns)
            .filter_map(|&index| file_column(self.table_schema.field(index).name()))
            .collect();
        if check_keys && !columns.contains(&KEY_COLUMN) {
            columns.push(KEY_COLUMN);
        }
        // Steps are checked while decoding: the step column first, the
        // others only for the rows that pass.
        let step_filter: Option<StepFilter> = check_steps.then(|| {
            let filter = Arc::clone(&filter);
            Arc::new(move |steps: &ArrayRef| filter.step_mask(steps)) as StepFilter
        });
        let request = RowRequest {
            ranges,
            columns,
            step_filter,
            batch_size: self.batch_size,
        };
        let Some(reader) = file.file.read_rows(request).map_err(external)? else {
            return Ok(None);
        };
        self.bytes_scanned.add(reader.prefetched_bytes);
        Ok(Some(OpenFile {
            reader,
            experiment_id: constant_id(&file.experiment_id, self.batch_size)?,
            run_id: constant_id(&file.run_id, self.batch_size)?,
            check_keys,
        }))
    }
}

impl PartitionScan {
    /// Filters a decoded batch, puts its columns in the table's types and
    /// order and adds the run's ids; `None` when no row is left.
    fn finish_batch(&mut self, batch: RecordBatch) -> DfResult<Option<RecordBatch>> {
        let Some(current) = &self.current else {
            return Ok(None);
        };
        self.rows_read.add(batch.num_rows());
        let mut batch = self.filter.filter_batch(batch, current.check_keys, false)?;
        if let Some(remaining) = self.remaining {
            if batch.num_rows() > remaining {
                batch = batch.slice(0, remaining);
            }
            self.remaining = Some(remaining - batch.num_rows());
        }
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(None);
        }
        let file_columns = self.table_schema.fields().len() - 2;
        let mut columns = Vec::with_capacity(self.projection.len());
        for &index in &self.projection {
            let column = if index == file_columns {
                ids(&current.experiment_id, rows)?
            } else if index == file_columns + 1 {
                ids(&current.run_id, rows)?
            } else {
                let field = self.table_schema.field(index);
                let column = batch
                    .schema()
                    .index_of(field.name())
                    .map(|position| Arc::clone(batch.column(position)))
                    .map_err(|_| {
                        DataFusionError::Internal(format!("column {} not read", field.name()))
                    })?;
                if column.data_type() == field.data_type() {
                    column
                } else {
                    // Files written by an older version may differ in type.
                    cast(&column, field.data_type())?
                }
            };
            columns.push(column);
        }
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options)?;
        self.output_rows.add(rows);
        Ok(Some(batch))
    }
}

/// The first `rows` rows of a constant id column (longer batches, which the
/// reader does not produce, get a column of their own).
fn ids(column: &ArrayRef, rows: usize) -> DfResult<ArrayRef> {
    if rows <= column.len() {
        Ok(column.slice(0, rows))
    } else {
        let value = column
            .as_any()
            .downcast_ref::<arrow::array::StringViewArray>()
            .map(|ids| ids.value(0).to_string())
            .unwrap_or_default();
        constant_id(&value, rows)
    }
}

/// A string view column holding `value` in each of `rows` rows (stored
/// once).
pub(crate) fn constant_id(value: &str, rows: usize) -> DfResult<ArrayRef> {
    let mut builder = StringViewBuilder::with_capacity(rows);
    builder.try_append_value_n(value, rows)?;
    Ok(Arc::new(builder.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::metrics_table::metrics_schema;
    use crate::storage::schema::{metric_file_schema, writer_properties};
    use crate::storage::{MetricFileWriter, SortedColumns};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::logical_expr::{Expr, col, lit};
    use datafusion::prelude::SessionContext;
    use futures::TryStreamExt;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::fs::File;

    const KEYS: [&str; 4] = ["a", "b/c", "loss", "z"];

    type Point = (String, i64, i64, f64);

    fn random_points(rng: &mut SmallRng, rows: usize) -> Vec<Point> {
        (0..rows)
            .map(|_| {
                let key = KEYS[rng.random_range(0..KEYS.len())].to_string();
                // Few distinct steps and timestamps: many ties.
                let step = rng.random_range(-5..400);
                let timestamp = rng.random_range(0..50);
                let value = match rng.random_range(0..20) {
                    0 => f64::NAN,
                    1 => f64::INFINITY,
                    2 => f64::NEG_INFINITY,
                    _ => rng.random_range(-1.0..1.0),
                };
                (key, step, timestamp, value)
            })
            .collect()
    }

    fn write(path: &std::path::Path, points: &[Point]) -> Arc<PersistedFile> {
        let columns =
            SortedColumns::from_points(points.iter().map(|p| (p.0.as_str(), p.1, p.2, p.3)));
        let mut writer = MetricFileWriter::create(path).unwrap();
        writer.write(columns).unwrap();
        writer.finish(vec![(1, 1)], vec![]).unwrap();
        Arc::new(PersistedFile::open(1, path).unwrap().0)
    }

    /// Rewrites a file without its block aggregates (as files written
    /// before they existed).
    fn strip_aggregates(path: &std::path::Path) -> Arc<PersistedFile> {
        let file = File::open(path).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let kept: Vec<parquet::file::metadata::KeyValue> = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .filter(|entry| entry.key != crate::storage::aggregates::AGGREGATES_KEY)
            .cloned()
            .collect();
        let batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
        let stripped = path.with_extension("stripped");
        let out = File::create(&stripped).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            out,
            metric_file_schema(),
            Some(writer_properties()),
        )
        .unwrap();
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        for entry in kept {
            writer.append_key_value_metadata(entry);
        }
        writer.close().unwrap();
        std::fs::rename(&stripped, path).unwrap();
        let opened = Arc::new(PersistedFile::open(2, path).unwrap().0);
        assert!(opened.aggregates().is_none());
        opened
    }

    /// The rows of a result as sorted lines of text (NaN prints as NaN).
    fn lines(batches: &[RecordBatch]) -> Vec<String> {
        let options = FormatOptions::default().with_null("NULL");
        let mut out = Vec::new();
        for batch in batches {
            let formatters: Vec<ArrayFormatter> = batch
                .columns()
                .iter()
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options).unwrap())
                .collect();
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = formatters
                    .iter()
                    .map(|formatter| formatter.value(row).to_string())
                    .collect();
                out.push(cells.join("|"));
            }
        }
        out.sort();
        out
    }

    /// Every row of `files` as one `metrics` batch, for plain DataFusion.
    fn table_batch(files: &[(Vec<Point>, &str, &str)]) -> RecordBatch {
        let mut batches = Vec::new();
        for (points, experiment, run) in files {
            let columns =
                SortedColumns::from_points(points.iter().map(|p| (p.0.as_str(), p.1, p.2, p.3)));
            let batch = columns.into_record_batch().unwrap();
            let rows = batch.num_rows();
            let mut columns = batch.columns().to_vec();
            columns.push(constant_id(experiment, rows).unwrap());
            columns.push(constant_id(run, rows).unwrap());
            batches.push(RecordBatch::try_new(metrics_schema(), columns).unwrap());
        }
        arrow::compute::concat_batches(&metrics_schema(), &batches).unwrap()
    }

    fn scan(
        groups: Vec<Vec<ScanFile>>,
        projection: &[usize],
        filters: &[Expr],
        limit: Option<usize>,
        batch_size: usize,
    ) -> (Vec<RecordBatch>, MetricFileScanExec) {
        let exec = MetricFileScanExec::new(
            groups,
            metrics_schema(),
            projection.to_vec(),
            ScanFilter::from_filters(filters),
            limit,
            batch_size,
        )
        .unwrap();
        let context = SessionContext::new().task_ctx();
        let mut batches = Vec::new();
        for partition in 0..exec.properties().partitioning.partition_count() {
            let stream = exec.execute(partition, Arc::clone(&context)).unwrap();
            let part: Vec<RecordBatch> = futures::executor::block_on(stream.try_collect()).unwrap();
            for batch in &part {
                assert!(batch.num_rows() <= batch_size.max(1));
                assert_eq!(
                    batch.schema(),
                    Arc::new(metrics_schema().project(projection).unwrap())
                );
            }
            batches.extend(part);
        }
        (batches, exec)
    }

    fn plain(batch: &RecordBatch, projection: &[usize], filters: &[Expr]) -> Vec<RecordBatch> {
        let context = SessionContext::new();
        let mut frame = context.read_batch(batch.clone()).unwrap();
        for filter in filters {
            frame = frame.filter(filter.clone()).unwrap();
        }
        let schema = metrics_schema();
        let names: Vec<&str> = projection
            .iter()
            .map(|&index| schema.field(index).name().as_str())
            .collect();
        let frame = frame.select_columns(&names).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(frame.collect())
            .unwrap()
    }

    /// The filters the scan takes over, drawn at random, each with the
    /// form plain DataFusion is given: column first (DataFusion 55 drops
    /// every row for `key = 'x' AND 'x' = key` on a dictionary column).
    fn random_filters(rng: &mut SmallRng) -> Vec<(Expr, Expr)> {
        let mut filters = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            let step = rng.random_range(-10..410i64);
            let key = KEYS[rng.random_range(0..KEYS.len())];
            let (filter, reference) = match rng.random_range(0..9) {
                0 => (col("key").eq(lit(key)), col("key").eq(lit(key))),
                1 => (lit(key).eq(col("key")), col("key").eq(lit(key))),
                7 => (lit(step).gt_eq(col("step")), col("step").lt_eq(lit(step))),
                _ => {
                    let filter = match rng.random_range(0..7) {
                        0 => col("key").in_list(
                            vec![
                                lit(KEYS[rng.random_range(0..4)]),
                                lit("missing"),
                                lit(KEYS[rng.random_range(0..4)]),
                            ],
                            false,
                        ),
                        1 => col("step").between(lit(step), lit(step + rng.random_range(-5..200))),
                        2 => col("step").lt(lit(step)),
                        3 => col("step").lt_eq(lit(step)),
                        4 => col("step").gt(lit(step)),
                        5 => col("step").gt_eq(lit(step)),
                        _ => col("step").eq(lit(step)),
                    };
                    (filter.clone(), filter)
                }
            };
            assert!(ScanFilter::handles(&filter), "{filter}");
            filters.push((filter, reference));
        }
        filters
    }

    #[test]
    fn answers_match_plain_datafusion_on_random_files_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        // Several runs; files of 0 to ~13 blocks; one file without block
        // aggregates (read whole and filtered row by row).
        let mut sources: Vec<(Vec<Point>, &str, &str)> = Vec::new();
        let mut scan_files = Vec::new();
        let runs = ["r1", "r2", "r3", "r4"];
        for (index, rows) in [1usize, 300, 9_000, 20_000, 0, 13_000]
            .into_iter()
            .enumerate()
        {
            let run = runs[index % runs.len()];
            let experiment = if index % 2 == 0 { "1" } else { "2" };
            let mut points = random_points(&mut rng, rows);
            if rows == 0 {
                // An empty file is never written: one row instead.
                points = random_points(&mut rng, 1);
            }
            let path = dir.path().join(format!("{index}.parquet"));
            let mut file = write(&path, &points);
            if index == 3 {
                file = strip_aggregates(&path);
            }
            scan_files.push(ScanFile {
                file,
                experiment_id: experiment.to_string(),
                run_id: run.to_string(),
                steps: (i64::MIN, i64::MAX),
            });
            sources.push((points, experiment, run));
        }
        let all = table_batch(&sources);
        let columns = metrics_schema().fields().len();
        for round in 0..60 {
            let (filters, references): (Vec<Expr>, Vec<Expr>) =
                random_filters(&mut rng).into_iter().unzip();
            let mut projection: Vec<usize> =
                (0..columns).filter(|_| rng.random_bool(0.6)).collect();
            if projection.is_empty() {
                projection.push(rng.random_range(0..columns));
            }
            let partitions = rng.random_range(1..4);
            let mut groups: Vec<Vec<ScanFile>> = vec![Vec::new(); partitions];
            for (index, file) in scan_files.iter().enumerate() {
                groups[index % partitions].push(file.clone());
            }
            let batch_size = [1, 100, 4096, 8192][rng.random_range(0..4)];
            let (ours, _) = scan(groups, &projection, &filters, None, batch_size);
            let expected = plain(&all, &projection, &references);
            assert_eq!(
                lines(&ours),
                lines(&expected),
                "round {round}: filters {filters:?}, projection {projection:?}"
            );
        }
    }

    #[test]
    fn files_read_from_the_object_store_are_opened_ahead_and_in_order() {
        let store = crate::storage::cache::testing::setup(256 << 20);
        let dir = tempfile::tempdir().unwrap();
        let mut rng = SmallRng::seed_from_u64(5);
        let (mut local, mut stored) = (Vec::new(), Vec::new());
        for seq in 1..=7u64 {
            let points = random_points(&mut rng, 5_000);
            let rows: Vec<(&str, i64, i64, f64)> = points
                .iter()
                .map(|p| (p.0.as_str(), p.1, p.2, p.3))
                .collect();
            let scan_file = |file| ScanFile {
                file,
                experiment_id: "0".to_string(),
                run_id: format!("r{seq}"),
                steps: (i64::MIN, i64::MAX),
            };
            local.push(scan_file(write(
                &dir.path().join(format!("{seq}.parquet")),
                &points,
            )));
            let run = format!("r{seq}");
            stored.push(scan_file(crate::storage::cache::testing::stored_file(
                &store, &run, seq, &rows,
            )));
        }
        let everything: Vec<usize> = (0..metrics_schema().fields().len()).collect();
        let filters = [col("step").between(lit(100), lit(4_000))];
        let (expected, _) = scan(vec![local], &everything, &filters, None, 1_000);
        let (read, exec) = scan(vec![stored.clone()], &everything, &filters, None, 1_000);
        assert!(!expected.is_empty());
        assert_eq!(lines(&read), lines(&expected), "same rows, same order");
        let metrics = exec.metrics().unwrap();
        assert_eq!(metrics.sum_by_name("files_opened").unwrap().as_usize(), 7);
        assert!(store.cache.snapshot().fetches >= 7);
        // A limit stops the scan after the first file; the threads opening
        // files ahead stop with it.
        let (limited, _) = scan(vec![stored], &[1, 3], &[], Some(10), 4);
        assert_eq!(limited.iter().map(RecordBatch::num_rows).sum::<usize>(), 10);
    }

    #[test]
    fn limit_stops_each_partition_and_pruning_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = SmallRng::seed_from_u64(11);
        let points = random_points(&mut rng, 30_000);
        let file = write(&dir.path().join("1.parquet"), &points);
        let scan_file = ScanFile {
            file,
            experiment_id: "1".to_string(),
            run_id: "r".to_string(),
            steps: (i64::MIN, i64::MAX),
        };
        let (limited, _) = scan(vec![vec![scan_file.clone()]], &[1, 3], &[], Some(7), 4);
        assert_eq!(limited.iter().map(RecordBatch::num_rows).sum::<usize>(), 7);

        let filters = [
            col("key").eq(lit("loss")),
            col("step").between(lit(100), lit(120)),
        ];
        let (rows, exec) = scan(vec![vec![scan_file]], &[1, 3, 5], &filters, None, 8192);
        let expected = points
            .iter()
            .filter(|p| p.0 == "loss" && (100..=120).contains(&p.1))
            .count();
        assert_eq!(
            rows.iter().map(RecordBatch::num_rows).sum::<usize>(),
            expected
        );
        let metrics = exec.metrics().unwrap();
        let pruned = metrics.sum_by_name("rows_pruned").unwrap().as_usize();
        let read = metrics.sum_by_name("rows_read").unwrap().as_usize();
        // Rows of partly matching blocks whose step is out of range are
        // dropped while decoding: neither pruned nor read.
        assert!(
            pruned + read <= 30_000 && read == expected,
            "{pruned} {read}"
        );
        assert!(
            read < 30_000 / 4,
            "only the blocks of 'loss' holding steps 100..=120 are read: {read}"
        );
        let shown = format!(
            "{}",
            datafusion::physical_plan::displayable(&exec).one_line()
        );
        assert!(
            shown.contains("pruning_predicate=key IN (loss) AND step BETWEEN 100 AND 120"),
            "{shown}"
        );
    }

    #[test]
    fn no_file_is_opened_when_no_row_can_match() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        let points = random_points(&mut rng, 5_000);
        let file = write(&dir.path().join("1.parquet"), &points);
        let scan_file = ScanFile {
            file,
            experiment_id: "1".to_string(),
            run_id: "r".to_string(),
            steps: (i64::MIN, i64::MAX),
        };
        for filters in [
            vec![col("key").eq(lit("absent"))],
            vec![col("step").gt(lit(10_000))],
            vec![col("key").eq(lit("a")), col("key").eq(lit("z"))],
            vec![col("step").lt(lit(i64::MIN))],
        ] {
            let (rows, exec) = scan(vec![vec![scan_file.clone()]], &[0, 1], &filters, None, 100);
            assert!(
                rows.iter().all(|batch| batch.num_rows() == 0),
                "{filters:?}"
            );
            let opened = exec.metrics().unwrap().sum_by_name("files_opened");
            assert!(
                opened.is_none_or(|count| count.as_usize() == 0),
                "{filters:?}"
            );
        }
    }
}
