//! `stepstore sql "SELECT ..."`: one read-only query, offline against a
//! data directory (`--data-dir`, no server needed) or against a running
//! server (`--server URL`), printed as a table, CSV or JSON.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use stepstore::engine::EngineConfig;
use stepstore::query::output::{ARROW_STREAM_MEDIA_TYPE, OutputFormat, from_arrow_stream};
use stepstore::query::{QueryConfig, QueryResult, QueryService};
use stepstore::wal::SyncPolicy;

/// Limits of SQL queries, shared by `serve` and `sql`.
#[derive(Args, Clone, Debug)]
pub struct SqlLimits {
    /// Memory one SQL query may use (operators and result), in MiB.
    #[arg(long, env = "STEPSTORE_SQL_MEMORY_MB", default_value_t = 1024)]
    pub sql_memory_mb: usize,
    /// Longest an SQL query may run, in seconds.
    #[arg(long, env = "STEPSTORE_SQL_TIMEOUT_SECS", default_value_t = 60)]
    pub sql_timeout_secs: u64,
    /// SQL queries that run at once (more wait their turn).
    #[arg(long, env = "STEPSTORE_SQL_MAX_CONCURRENT", default_value_t = 4)]
    pub sql_max_concurrent: usize,
    /// Largest encoded SQL result (JSON, CSV or Arrow) a server sends, in
    /// MiB.
    #[arg(long, env = "STEPSTORE_SQL_MAX_RESULT_MB", default_value_t = 256)]
    pub sql_max_result_mb: usize,
}

impl SqlLimits {
    /// The query settings these flags give.
    pub fn query_config(&self) -> QueryConfig {
        QueryConfig {
            memory_limit_bytes: self.sql_memory_mb.max(1) << 20,
            time_limit: Duration::from_secs(self.sql_timeout_secs.max(1)),
            max_concurrent: self.sql_max_concurrent.max(1),
            max_result_bytes: self.sql_max_result_mb.max(1) << 20,
            ..QueryConfig::default()
        }
    }
}

/// Arguments of `stepstore sql`.
#[derive(Args)]
pub struct SqlArgs {
    /// The query (one statement that reads).
    query: String,
    #[command(flatten)]
    target: crate::cli_target::Target,
    /// Output: table, csv or json.
    #[arg(long, default_value = "table")]
    format: OutputFormat,
    #[command(flatten)]
    limits: SqlLimits,
}

/// Runs the query and prints its result.
pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    let result = match &args.target.server {
        Some(url) => query_server(url, args.target.token.as_deref(), &args.query)?,
        None => query_offline(
            args.target.data_dir(),
            &args.query,
            args.limits.query_config(),
        )?,
    };
    let bytes = args
        .format
        .encode(&result)
        .context("cannot format the result")?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&bytes)?;
    if args.format == OutputFormat::Json {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

fn query_offline(
    data_dir: PathBuf,
    query: &str,
    config: QueryConfig,
) -> anyhow::Result<QueryResult> {
    let mut engine_config = EngineConfig::new(&data_dir);
    engine_config.read_only = true;
    engine_config.wal_sync = SyncPolicy::Off;
    let engine = crate::cli_target::open_offline(
        engine_config,
        "query the server instead with --server http://<its address>",
    )?;
    let service = Arc::new(QueryService::new(Arc::clone(&engine), config)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(service.execute(query));
    drop(service);
    engine.shutdown()?;
    Ok(outcome?)
}

fn query_server(url: &str, token: Option<&str>, query: &str) -> anyhow::Result<QueryResult> {
    let (endpoint, request) = crate::cli_target::server_post(url, token, "/api/v1/sql")?;
    let response = request
        .header(reqwest::header::ACCEPT, ARROW_STREAM_MEDIA_TYPE)
        .json(&serde_json::json!({ "query": query }))
        .send()
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .with_context(|| format!("cannot read the answer of {endpoint}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|value| {
                value
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(String::from)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("the server refused the query ({status}): {message}");
    }
    Ok(from_arrow_stream(&body)?)
}
