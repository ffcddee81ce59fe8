//! SQL over runs, params, tags and metrics (DataFusion).
//!
//! Every query gets a fresh DataFusion `SessionContext` with these
//! read-only tables:
//!
//! - `experiments`, `experiment_tags`, `runs`, `params`, `tags`, and the
//!   lineage tables `artifacts`, `artifact_properties`, `events`: from a
//!   copy of the catalog taken when the query starts ([`catalog_tables`]);
//!   the rows of `runs`, `params` and `tags` are built only for the runs
//!   the query's `experiment_id` / `run_id` filters choose
//!   ([`run_tables`]);
//! - `metrics`: every point, read from the persisted Parquet files plus a
//!   snapshot of the in-memory buffers, pruned by `experiment_id`,
//!   `run_id`, `key` and `step` filters ([`metrics_table`]);
//! - `latest_metrics`: one row per run and key, from the per-key summaries
//!   the engine keeps ([`latest_table`]).
//!
//! Only statements that read are accepted ([`safety`]); each query runs
//! under a memory limit and a time limit on a runtime of its own, so a
//! heavy query neither takes the server down nor starves its HTTP threads.
//! The catalog tables count against the memory limit, functions that
//! allocate outside it are bounded (`bounded_functions`), and results are
//! encoded batch by batch as JSON rows, CSV, an Arrow IPC stream or a text
//! table ([`output`]) within `--sql-max-result-mb`, on the query threads
//! and within the query's time limit and turn.

mod bounded_functions;
pub mod catalog_tables;
mod constant_key_aggregate;
pub mod latest_table;
mod metric_scan;
pub mod metrics_table;
pub mod output;
mod run_filter;
mod run_tables;
pub mod safety;
mod scan_filter;

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::engine::{Engine, EngineError};
use crate::error_kind::{Classify, ErrorKind};
use crate::ingest::rewinds::RewoundPoints;
use crate::model::ExperimentId;
use output::{OutputFormat, ResultEncoder};

/// Limits and execution settings of SQL queries.
#[derive(Clone, Debug)]
pub struct QueryConfig {
    /// Memory one query may use for its operators (hash tables, sorts) and
    /// its result, in bytes. Past it the query fails; nothing spills to
    /// disk.
    pub memory_limit_bytes: usize,
    /// Longest a query may run, waiting for its turn included.
    pub time_limit: Duration,
    /// Queries that run at once; more wait for a turn (within their time
    /// limit).
    pub max_concurrent: usize,
    /// Worker threads of the query runtime, and DataFusion's target
    /// partitions.
    pub threads: usize,
    /// Largest encoded result, in bytes.
    pub max_result_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        let threads = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2);
        QueryConfig {
            memory_limit_bytes: 1 << 30,
            time_limit: Duration::from_secs(60),
            max_concurrent: 4,
            threads,
            max_result_bytes: 256 << 20,
        }
    }
}

/// Errors of SQL queries.
#[derive(Debug, Error)]
pub enum QueryError {
    /// The statement does something other than read.
    #[error("{0}")]
    Refused(String),
    /// The query is not valid (parse, plan or execution error caused by the
    /// query); DataFusion's message.
    #[error("{0}")]
    Invalid(String),
    /// The query needed more memory than its limit.
    #[error(
        "the query needs more memory than its limit of {limit_mb} MiB (add filters, a LIMIT \
         or aggregate more): {message}"
    )]
    MemoryLimit {
        /// The limit in MiB.
        limit_mb: usize,
        /// DataFusion's message.
        message: String,
    },
    /// The query ran past its time limit and was cancelled.
    #[error("the query did not finish within its time limit of {0:?} and was cancelled")]
    TimeLimit(Duration),
    /// The engine could not provide the data.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Something failed on the server side (file read, internal error).
    #[error("the query failed: {0}")]
    Internal(String),
    /// The result could not be encoded.
    #[error("cannot encode the result: {0}")]
    Output(String),
    /// The encoded result passed its limit.
    #[error(
        "the result is larger than the limit of {limit_mb} MiB (--sql-max-result-mb): add a \
         LIMIT, filters or aggregate more"
    )]
    ResultTooLarge {
        /// The limit in MiB.
        limit_mb: usize,
    },
}

impl QueryError {
    /// Maps a DataFusion error to the class of failure it is.
    fn from_datafusion(error: DataFusionError, config: &QueryConfig) -> Self {
        let message = error.to_string();
        match error.find_root() {
            DataFusionError::ResourcesExhausted(_) => QueryError::MemoryLimit {
                limit_mb: config.memory_limit_bytes >> 20,
                message,
            },
            DataFusionError::External(_)
            | DataFusionError::IoError(_)
            | DataFusionError::ObjectStore(_)
            | DataFusionError::ParquetError(_)
            | DataFusionError::Internal(_) => QueryError::Internal(message),
            _ => QueryError::Invalid(message),
        }
    }
}

impl Classify for QueryError {
    fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Refused(_) | QueryError::Invalid(_) => ErrorKind::InvalidParameter,
            QueryError::MemoryLimit { .. }
            | QueryError::TimeLimit(_)
            | QueryError::ResultTooLarge { .. } => ErrorKind::InvalidParameter,
            QueryError::Engine(error) => error.kind(),
            QueryError::Internal(_) | QueryError::Output(_) => ErrorKind::Internal,
        }
    }
}

/// The result of a query: its schema and its batches.
#[derive(Clone, Debug)]
pub struct QueryResult {
    /// Columns of the result.
    pub schema: SchemaRef,
    /// Rows, in batches.
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Runs SQL queries against an engine under the configured limits.
pub struct QueryService {
    engine: Arc<Engine>,
    config: QueryConfig,
    /// Holds what queries share: the Parquet footer cache and the object
    /// store registry.
    shared_runtime: Arc<RuntimeEnv>,
    turns: Arc<Semaphore>,
    /// The threads queries run on. Taken (and shut down without waiting)
    /// on drop.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for QueryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl QueryService {
    /// A service for `engine` with its own query threads.
    pub fn new(engine: Arc<Engine>, config: QueryConfig) -> Result<Self, QueryError> {
        let shared_runtime = RuntimeEnvBuilder::new()
            .build_arc()
            .map_err(|error| QueryError::Internal(error.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("stepstore-query")
            .enable_all()
            .build()
            .map_err(|error| {
                QueryError::Internal(format!("cannot start the query threads: {error}"))
            })?;
        Ok(QueryService {
            engine,
            turns: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            shared_runtime,
            runtime: Some(runtime),
        })
    }

    /// Its settings.
    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// Runs one SQL statement over everything and collects its result. The
    /// work happens on the service's query threads; the caller only waits.
    pub async fn execute(self: &Arc<Self>, sql: &str) -> Result<QueryResult, QueryError> {
        self.execute_within(sql, None).await
    }

    /// Runs one SQL statement that sees only the experiments in `allowed`
    /// (every table: catalog tables, `metrics`, `latest_metrics`) when
    /// given, everything otherwise.
    pub async fn execute_within(
        self: &Arc<Self>,
        sql: &str,
        allowed: Option<Arc<BTreeSet<ExperimentId>>>,
    ) -> Result<QueryResult, QueryError> {
        match self.spawn(sql, allowed, None).await? {
            QueryOutput::Batches(result) => Ok(result),
            QueryOutput::Encoded(_) => Err(QueryError::Internal(
                "the query returned an encoding instead of batches".to_string(),
            )),
        }
    }

    /// Runs one SQL statement (over the experiments in `allowed` when
    /// given) and encodes its result in `format` as the batches arrive,
    /// within `max_result_bytes`; the encoding runs on the query threads
    /// and counts against the query's turn and time limit.
    pub async fn execute_encoded(
        self: &Arc<Self>,
        sql: &str,
        allowed: Option<Arc<BTreeSet<ExperimentId>>>,
        format: OutputFormat,
    ) -> Result<Vec<u8>, QueryError> {
        match self.spawn(sql, allowed, Some(format)).await? {
            QueryOutput::Encoded(bytes) => Ok(bytes),
            QueryOutput::Batches(result) => format.encode(&result),
        }
    }

    /// Runs a statement on the query threads under the time limit; aborts
    /// it when the caller stops waiting.
    async fn spawn(
        self: &Arc<Self>,
        sql: &str,
        allowed: Option<Arc<BTreeSet<ExperimentId>>>,
        format: Option<OutputFormat>,
    ) -> Result<QueryOutput, QueryError> {
        let Some(runtime) = self.runtime.as_ref() else {
            return Err(QueryError::Internal(
                "the query service is stopped".to_string(),
            ));
        };
        let service = Arc::clone(self);
        let sql = sql.to_string();
        let time_limit = self.config.time_limit;
        let task = runtime.spawn(async move {
            let run = service.run(&sql, allowed.as_deref(), format);
            match tokio::time::timeout(time_limit, run).await {
                Ok(outcome) => outcome,
                Err(_) => Err(QueryError::TimeLimit(time_limit)),
            }
        });
        // Dropping the caller's future (client gone) aborts the query.
        let abort = AbortOnDrop(task.abort_handle());
        let outcome = task.await;
        drop(abort);
        match outcome {
            Ok(outcome) => outcome,
            Err(error) if error.is_panic() => Err(QueryError::Internal(
                "the query panicked; the server keeps serving".to_string(),
            )),
            Err(_) => Err(QueryError::Internal("the query was cancelled".to_string())),
        }
    }

    /// Plans and runs one statement on the current runtime; collects its
    /// batches, or encodes them in `format` as they arrive.
    async fn run(
        &self,
        sql: &str,
        allowed: Option<&BTreeSet<ExperimentId>>,
        format: Option<OutputFormat>,
    ) -> Result<QueryOutput, QueryError> {
        let _turn = self
            .turns
            .acquire()
            .await
            .map_err(|_| QueryError::Internal("the query service is stopped".to_string()))?;
        let (context, pool, _catalog_memory) = self.session(allowed)?;
        let state = context.state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state
            .sql_to_statement(sql, &dialect)
            .map_err(|error| QueryError::from_datafusion(error, &self.config))?;
        safety::check_statement(&statement)?;
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(|error| QueryError::from_datafusion(error, &self.config))?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|error| QueryError::Refused(safety::refusal_message(&error.to_string())))?;
        let frame = context
            .execute_logical_plan(plan)
            .await
            .map_err(|error| QueryError::from_datafusion(error, &self.config))?;
        let schema: SchemaRef = Arc::clone(frame.schema().inner());
        let mut stream = frame
            .execute_stream()
            .await
            .map_err(|error| QueryError::from_datafusion(error, &self.config))?;
        let output = match format {
            Some(format) => {
                let mut encoder =
                    ResultEncoder::new(format, Arc::clone(&schema), self.config.max_result_bytes)?;
                // The encoding counts against the memory limit too.
                let reservation = MemoryConsumer::new("encoded result").register(&pool);
                while let Some(batch) = stream.next().await {
                    let batch =
                        batch.map_err(|error| QueryError::from_datafusion(error, &self.config))?;
                    encoder.push(&batch)?;
                    reservation
                        .try_resize(encoder.bytes())
                        .map_err(|error| QueryError::from_datafusion(error, &self.config))?;
                }
                QueryOutput::Encoded(encoder.finish()?)
            }
            None => {
                // The result counts against the same limit as the operators.
                let reservation = MemoryConsumer::new("query result").register(&pool);
                let mut batches = Vec::new();
                while let Some(batch) = stream.next().await {
                    let batch =
                        batch.map_err(|error| QueryError::from_datafusion(error, &self.config))?;
                    reservation
                        .try_grow(batch.get_array_memory_size())
                        .map_err(|error| QueryError::from_datafusion(error, &self.config))?;
                    if batch.num_rows() > 0 {
                        batches.push(batch);
                    }
                }
                QueryOutput::Batches(QueryResult { schema, batches })
            }
        };
        drop(stream);
        drop(context);
        Ok(output)
    }

    /// A session with the tables registered (holding only the experiments
    /// in `allowed` when given) and a memory pool of its own.
    fn session(
        &self,
        allowed: Option<&BTreeSet<ExperimentId>>,
    ) -> Result<(SessionContext, Arc<dyn MemoryPool>, MemoryReservation), QueryError> {
        let internal = |error: DataFusionError| QueryError::Internal(error.to_string());
        let pool: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
            GreedyMemoryPool::new(self.config.memory_limit_bytes),
            NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
        ));
        let runtime = RuntimeEnvBuilder::from_runtime_env(&self.shared_runtime)
            .with_memory_pool(Arc::clone(&pool))
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(internal)?;
        let config = SessionConfig::new()
            .with_target_partitions(self.config.threads.max(1))
            .with_information_schema(true);
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(
                constant_key_aggregate::ConstantKeyAggregateRule,
            ))
            .build();
        bounded_functions::register(&mut state, self.config.memory_limit_bytes / 4)
            .map_err(internal)?;
        let context = SessionContext::new_with_state(state);
        let catalog = match allowed {
            Some(allowed) => Arc::new(self.engine.catalog_state().restricted_to(allowed)),
            None => Arc::new(self.engine.catalog_state()),
        };
        // The catalog tables are the query's memory too.
        let catalog_bytes = catalog_tables::register(&context, &catalog).map_err(internal)?;
        let catalog_memory = MemoryConsumer::new("catalog tables").register(&pool);
        catalog_memory
            .try_grow(catalog_bytes)
            .map_err(|error| QueryError::from_datafusion(error, &self.config))?;
        let mut runs = run_filter::RunList::from_catalog(Arc::clone(&catalog));
        if allowed.is_some() {
            runs = runs.closed();
        }
        for kind in [
            run_tables::RunTableKind::Runs,
            run_tables::RunTableKind::Params,
            run_tables::RunTableKind::Tags,
        ] {
            context
                .register_table(
                    kind.name(),
                    Arc::new(run_tables::RunCatalogTable::new(kind, runs.clone())),
                )
                .map_err(internal)?;
        }
        context
            .register_table(
                "metrics",
                Arc::new(metrics_table::MetricsTable::new(
                    Arc::clone(&self.engine),
                    runs.clone(),
                    RewoundPoints::Hidden,
                )),
            )
            .map_err(internal)?;
        context
            .register_table(
                "rewound_metrics",
                Arc::new(metrics_table::MetricsTable::new(
                    Arc::clone(&self.engine),
                    runs.clone(),
                    RewoundPoints::Only,
                )),
            )
            .map_err(internal)?;
        context
            .register_table(
                "latest_metrics",
                Arc::new(latest_table::LatestMetricsTable::new(
                    Arc::clone(&self.engine),
                    runs,
                )),
            )
            .map_err(internal)?;
        Ok((context, pool, catalog_memory))
    }
}

impl Drop for QueryService {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a query hands back: its batches, or their encoding.
enum QueryOutput {
    Batches(QueryResult),
    Encoded(Vec<u8>),
}

/// Aborts a spawned query when the caller stops waiting for it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
