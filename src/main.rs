//! The `stepstore` command line: `serve` runs the server on a data
//! directory; `sql` runs one read-only SQL query against a data directory
//! (offline) or a running server.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use stepstore::engine::{Engine, EngineConfig};
use stepstore::ingest::IngestConfig;
use stepstore::server::{self, ServerConfig};
use stepstore::wal::SyncPolicy;

mod sql_cli;

/// stepstore: an experiment-tracking metrics engine.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on a data directory.
    Serve(ServeArgs),
    /// Run one read-only SQL query against a data directory or a server.
    Sql(sql_cli::SqlArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Data directory (created if missing).
    #[arg(long, env = "STEPSTORE_DATA_DIR", default_value = "./stepstore-data")]
    data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "STEPSTORE_LISTEN", default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// WAL sync policy: always (acknowledge only synced writes), interval,
    /// interval:<N>ms, or off.
    #[arg(long, env = "STEPSTORE_WAL_SYNC", default_value = "always")]
    wal_sync: SyncPolicy,
    /// WAL segment size in MiB.
    #[arg(long, env = "STEPSTORE_WAL_SEGMENT_MB", default_value_t = 64)]
    wal_segment_mb: u64,
    /// Ingest shard threads (default: one per CPU).
    #[arg(long, env = "STEPSTORE_SHARDS")]
    shards: Option<usize>,
    /// Threads that write Parquet files.
    #[arg(long, env = "STEPSTORE_PERSIST_THREADS", default_value_t = 1)]
    persist_threads: usize,
    /// A run's buffer is persisted once it holds this many points.
    #[arg(long, env = "STEPSTORE_FLUSH_ROWS", default_value_t = 1_000_000)]
    flush_rows: usize,
    /// ... or once its oldest point is this many seconds old.
    #[arg(long, env = "STEPSTORE_FLUSH_AGE_SECS", default_value_t = 300)]
    flush_age_secs: u64,
    /// Memory for buffers in MiB; past it the largest buffers are persisted.
    #[arg(long, env = "STEPSTORE_BUFFER_BUDGET_MB", default_value_t = 512)]
    buffer_budget_mb: u64,
    /// Past this many MiB buffered, metric writes get 503 (default: twice
    /// the budget).
    #[arg(long, env = "STEPSTORE_BUFFER_REJECT_MB")]
    buffer_reject_mb: Option<u64>,
    /// Largest request body in MiB.
    #[arg(long, env = "STEPSTORE_MAX_REQUEST_MB", default_value_t = 64)]
    max_request_mb: usize,
    #[command(flatten)]
    sql_limits: sql_cli::SqlLimits,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Sql(args) => sql_cli::run(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let shards = args.shards.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2)
    });
    let budget = args.buffer_budget_mb << 20;
    let ingest = IngestConfig {
        shards,
        persist_threads: args.persist_threads,
        flush_rows: args.flush_rows.max(1),
        flush_age: Duration::from_secs(args.flush_age_secs.max(1)),
        buffer_budget_bytes: budget,
        ..IngestConfig::default()
    };
    let mut config = EngineConfig::new(&args.data_dir);
    config.wal_sync = args.wal_sync;
    config.wal_segment_bytes = args.wal_segment_mb.max(1) << 20;
    config.buffer_reject_bytes = args.buffer_reject_mb.map_or(budget * 2, |mb| mb << 20);
    config.ingest = ingest;
    let engine = Engine::open(config)
        .with_context(|| format!("cannot open data directory {}", args.data_dir.display()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("stepstore-http")
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        tracing::info!(%address, data_dir = %args.data_dir.display(), wal_sync = %args.wal_sync, shards, "serving");
        println!("stepstore listening on http://{address}");
        let server_config = ServerConfig {
            max_request_bytes: args.max_request_mb.max(1) << 20,
            sql: args.sql_limits.query_config(),
        };
        server::serve(Arc::clone(&engine), listener, server_config, shutdown_signal())
            .await
            .context("server failed")
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    let stopped = engine.shutdown();
    served?;
    stopped.context("shutdown could not persist every buffer (the WAL keeps the data)")?;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests and persisting buffers");
}
