//! The `stepstore` command line: `serve` runs the server on a data
//! directory; `bench` drives load against a server; `import tensorboard`
//! moves TensorBoard event files into a data directory; `sql` runs one
//! read-only SQL query against a data directory (offline) or a server.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use std::sync::atomic::Ordering;

use stepstore::auth::{AuthMode, Scope};
use stepstore::bench::BenchConfig;
use stepstore::durable_fs::{FaultPlan, FileIo};
use stepstore::engine::replica::ReplicaSettings;
use stepstore::engine::{Engine, EngineConfig};
use stepstore::ingest::IngestConfig;
use stepstore::server::auth::AuthSettings;
use stepstore::server::connection::ConnectionLimits;
use stepstore::server::hygiene::{AllowedHosts, HygieneSettings};
use stepstore::server::mlflow_ui::{MlflowUi, MlflowUiSource};
use stepstore::server::{self, ServerConfig};
use stepstore::storage::MetricStore;
use stepstore::wal::SyncPolicy;

mod cli_target;
mod gc_cli;
mod sql_cli;
mod token_cli;

/// jemalloc keeps freed pages for reuse: the ingest path allocates and
/// frees large column buffers all the time, and glibc's allocator handed
/// them back to the kernel, so every new buffer paid page faults and page
/// zeroing (a tenth of the server's CPU under Arrow load).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts: a background thread gives
/// freed pages back to the kernel once unused for its decay time (10 s)
/// even while the server is idle. Without it, pages are given back only
/// during later allocations, so the memory a gc or a finished query freed
/// stayed resident on an idle server (measured: 183 MiB after a gc of
/// 100,000 runs, 55 MiB with it).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 23] = b"background_thread:true\0";

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
    Serve(Box<ServeArgs>),
    /// Drive ingest load against stepstore or any MLflow-compatible server
    /// and report throughput and latency.
    Bench(BenchArgs),
    /// Import metric history from other tools into a data directory (stop
    /// the server on it first).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Run one read-only SQL query against a data directory or a server.
    Sql(sql_cli::SqlArgs),
    /// Manage access tokens (create, list, revoke).
    #[command(subcommand)]
    Token(token_cli::TokenCommand),
    /// Remove for good the runs and experiments deleted more than
    /// --older-than ago, with their metric files (prints what it would
    /// remove unless --yes).
    Gc(gc_cli::GcArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Base URL of the server.
    #[arg(
        long,
        env = "STEPSTORE_BENCH_TARGET",
        default_value = "http://127.0.0.1:5000"
    )]
    target: String,
    /// mlflow (runs/log-batch, any MLflow-compatible server), or one of
    /// stepstore's bulk paths: columnar, ndjson, arrow.
    #[arg(long, default_value = "mlflow")]
    protocol: String,
    /// Runs to log to (at least --concurrency).
    #[arg(long, default_value_t = 4)]
    runs: usize,
    /// Metric keys per run.
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Steps of every key per request (mlflow: keys x steps <= 1000).
    #[arg(long, default_value_t = 10)]
    steps_per_request: usize,
    /// Runs per request (bulk protocols).
    #[arg(long, default_value_t = 1)]
    runs_per_request: usize,
    /// Connections sending at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// How long to send, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Only generate request bodies (shows the generator's own ceiling).
    #[arg(long)]
    dry_run: bool,
    /// Send each bulk request with its own Idempotency-Key header (as the
    /// Python client does).
    #[arg(long)]
    idempotency_keys: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Threads of the generator's async runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Token sent as `Authorization: Bearer` (a write token).
    #[arg(long, env = "STEPSTORE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// TensorBoard event files: each run directory under LOGDIR becomes a
    /// run, each scalar tag a key.
    Tensorboard(TensorboardImportArgs),
    /// A dvc lock file (dvc.lock): each stage becomes a finished run, its
    /// deps INPUT and its outs OUTPUT artifacts with their hashes.
    Dvc(DvcImportArgs),
}

#[derive(Args)]
struct DvcImportArgs {
    /// The lock file (PATH/dvc.lock).
    lockfile: PathBuf,
    /// Experiment to import into (created if missing).
    #[arg(long, default_value = "dvc")]
    experiment: String,
    /// Data directory (created if missing).
    #[arg(long, env = "STEPSTORE_DATA_DIR", default_value = "./stepstore-data")]
    data_dir: PathBuf,
}

#[derive(Args)]
struct TensorboardImportArgs {
    /// The TensorBoard log directory.
    logdir: PathBuf,
    /// Experiment to import into (created if missing).
    #[arg(long)]
    experiment: String,
    /// Data directory (created if missing).
    #[arg(long, env = "STEPSTORE_DATA_DIR", default_value = "./stepstore-data")]
    data_dir: PathBuf,
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
    /// Threads that write Parquet files (each file write waits on fsync,
    /// so several overlap even on few cores: many small runs need them).
    #[arg(long, env = "STEPSTORE_PERSIST_THREADS", default_value_t = 4)]
    persist_threads: usize,
    /// A run's buffer is persisted once it holds this many points.
    #[arg(long, env = "STEPSTORE_FLUSH_ROWS", default_value_t = 1_000_000)]
    flush_rows: usize,
    /// ... or once its oldest point is this many seconds old.
    #[arg(long, env = "STEPSTORE_FLUSH_AGE_SECS", default_value_t = 300)]
    flush_age_secs: u64,
    /// A running run's newest files are merged once it has this many files
    /// (an ended run's files are always merged into one).
    #[arg(long, env = "STEPSTORE_COMPACT_AFTER_FILES", default_value_t = 16)]
    compact_after_files: usize,
    /// Seconds a finished run stays loaded after its last write or
    /// point-by-point read. Then only its key summaries stay in memory
    /// (about 80 bytes per key); its files are loaded again from its
    /// manifest when next read. Not with --store, where runs stay loaded.
    /// 0 keeps every run loaded.
    #[arg(long, env = "STEPSTORE_IDLE_RUN_SECS", default_value_t = 60)]
    idle_run_secs: u64,
    /// Memory for buffers in MiB. From three quarters of it the largest
    /// buffers leave memory (small ones spilled together to a spill file,
    /// large ones written to their runs' files); when it is full, metric
    /// writes wait for room.
    #[arg(long, env = "STEPSTORE_BUFFER_BUDGET_MB", default_value_t = 512)]
    buffer_budget_mb: u64,
    /// Object store that metric files are uploaded to once written
    /// locally: s3://bucket/prefix, gs://bucket/prefix, az://container/prefix
    /// or file:///path. Credentials come from each cloud's standard
    /// environment variables (AWS_ACCESS_KEY_ID, GOOGLE_SERVICE_ACCOUNT,
    /// AZURE_STORAGE_ACCOUNT_NAME, ...).
    #[arg(long, env = "STEPSTORE_STORE")]
    store: Option<String>,
    /// Endpoint of an S3-compatible server for an s3:// store, such as
    /// http://127.0.0.1:9000.
    #[arg(long, env = "STEPSTORE_STORE_ENDPOINT", requires = "store")]
    store_endpoint: Option<String>,
    /// With --store: directory of the local cache of the store (footers
    /// and ranges read from it); <data-dir>/cache when absent.
    #[arg(long, env = "STEPSTORE_CACHE_DIR", requires = "store")]
    cache_dir: Option<PathBuf>,
    /// With --store: local disk in MiB for copies of uploaded files and
    /// ranges read from the store; the least recently read go first, and
    /// their reads go to the store.
    #[arg(long, env = "STEPSTORE_CACHE_MB", default_value_t = stepstore::storage::cache::DEFAULT_CACHE_MB)]
    cache_mb: u64,
    /// Serve as a read replica of the writer's --store: every read API,
    /// from the store's files and catalog snapshots, no writes (405).
    #[arg(long, env = "STEPSTORE_READ_ONLY", requires = "store")]
    read_only: bool,
    /// With --read-only: seconds between looks at the store for new
    /// catalog snapshots and files.
    #[arg(
        long,
        env = "STEPSTORE_REFRESH_SECS",
        default_value_t = 5,
        requires = "read_only"
    )]
    refresh_secs: u64,
    /// With --read-only: the writer's URL, named in the error a write gets.
    #[arg(long, env = "STEPSTORE_WRITER_URL", requires = "read_only")]
    writer_url: Option<String>,
    /// Memory in MiB for cached metric file footers (read again from disk
    /// when dropped).
    #[arg(long, env = "STEPSTORE_FOOTER_CACHE_MB", default_value_t = 32)]
    footer_cache_mb: u64,
    /// Seconds a metric write waits for buffer room before it gets 503.
    #[arg(long, env = "STEPSTORE_OVERLOAD_WAIT_SECS", default_value_t = 10)]
    overload_wait_secs: u64,
    /// Distinct metric keys one run may have; a request adding more is
    /// refused.
    #[arg(long, env = "STEPSTORE_MAX_KEYS_PER_RUN", default_value_t = 100_000)]
    max_keys_per_run: usize,
    /// Largest request body in MiB.
    #[arg(long, env = "STEPSTORE_MAX_REQUEST_MB", default_value_t = 64)]
    max_request_mb: usize,
    /// Serve the official MLflow web UI at / from an installed mlflow
    /// package: `auto` (found through python3) or the path of its
    /// mlflow/server/js/build directory.
    #[arg(long, env = "STEPSTORE_MLFLOW_UI", value_name = "auto|PATH")]
    mlflow_ui: Option<MlflowUiSource>,
    /// off or required. Default: off on a loopback address; on any other
    /// address it must be given.
    #[arg(long, env = "STEPSTORE_AUTH", value_name = "off|required")]
    auth: Option<AuthMode>,
    /// Serve /metrics without a token.
    #[arg(long, env = "STEPSTORE_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Host names requests may be addressed to (comma-separated; `*`:
    /// any). Default: the listen address, localhost, 127.0.0.1 and ::1;
    /// localhost and any IP address when listening on every address.
    #[arg(long, env = "STEPSTORE_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Origins (`https://host:port`, comma-separated, or `*`) whose web
    /// pages may call this server; none by default.
    #[arg(
        long = "cors-origin",
        env = "STEPSTORE_CORS_ORIGIN",
        value_delimiter = ','
    )]
    cors_origins: Vec<String>,
    /// Connections served at once; past it a new connection gets 503.
    #[arg(long, env = "STEPSTORE_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Time a client has to send a request's headers, from the connection's
    /// opening or the previous response (so also the idle keep-alive time).
    #[arg(long, env = "STEPSTORE_HEADER_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    header_timeout: Duration,
    /// Longest pause while a request body arrives (a stalled upload gets
    /// 408) or while an answer is written (a client that reads nothing for
    /// this long is disconnected).
    #[arg(long, env = "STEPSTORE_BODY_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    body_timeout: Duration,
    /// Least time between two catalog snapshots (the WAL's catalog records
    /// before the newest snapshot can then be removed).
    #[arg(long, env = "STEPSTORE_SNAPSHOT_INTERVAL", default_value = "30s",
          value_parser = humantime::parse_duration)]
    snapshot_interval: Duration,
    /// Live streams (`/api/v1/runs/{id}/stream`) open at once; past it 503.
    #[arg(long, env = "STEPSTORE_MAX_STREAMS", default_value_t = 256)]
    max_streams: usize,
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
        Command::Serve(args) => serve(*args),
        Command::Bench(args) => bench(args),
        Command::Import(ImportCommand::Tensorboard(args)) => import_tensorboard(args),
        Command::Import(ImportCommand::Dvc(args)) => import_dvc(args),
        Command::Sql(args) => sql_cli::run(args),
        Command::Token(command) => token_cli::run(command),
        Command::Gc(args) => gc_cli::run(args),
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let config = BenchConfig {
        target: args.target.trim_end_matches('/').to_string(),
        protocol: args.protocol.parse()?,
        runs: args.runs,
        keys: args.keys,
        steps_per_request: args.steps_per_request,
        runs_per_request: args.runs_per_request,
        concurrency: args.concurrency,
        duration: args.duration,
        dry_run: args.dry_run,
        idempotency_keys: args.idempotency_keys,
        token: args.token,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .thread_name("stepstore-bench")
        .build()
        .context("cannot start the async runtime")?;
    let quiet = args.json;
    let report = runtime.block_on(stepstore::bench::run(config, move |progress, elapsed| {
        if quiet {
            return;
        }
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let points = progress.points.load(Ordering::Relaxed);
        eprintln!(
            "  {:>5.1} s  {:>12.0} points/s  {:>9} requests  {} errors",
            seconds,
            points as f64 / seconds,
            progress.requests.load(Ordering::Relaxed),
            progress.errors.load(Ordering::Relaxed)
        );
    }))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// The auth mode to run with: as given, or off on a loopback address; a
/// server reachable from other machines must say.
fn auth_mode(args: &ServeArgs) -> anyhow::Result<AuthMode> {
    match args.auth {
        Some(mode) => Ok(mode),
        None if args.listen.ip().is_loopback() => Ok(AuthMode::Off),
        None => anyhow::bail!(
            "{} is not a loopback address, so anyone who reaches it could read and delete \
             everything: start with --auth required (tokens: `stepstore token create --scope \
             admin --name admin --data-dir {}`), or with --auth off to serve without \
             authentication on purpose",
            args.listen,
            args.data_dir.display()
        ),
    }
}

/// Environment variable of the fault plan tests use to make file
/// operations fail (see `stepstore::durable_fs::FaultPlan`).
const IO_FAULTS_ENV: &str = "STEPSTORE_IO_FAULTS";

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let auth = AuthSettings {
        mode: auth_mode(&args)?,
        metrics_public: args.metrics_public,
    };
    let shards = args.shards.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2)
    });
    let mlflow_ui = match &args.mlflow_ui {
        Some(source) => {
            let ui = MlflowUi::locate(source)?;
            tracing::info!(build = %ui.root().display(), version = ui.version().unwrap_or("unknown"), "serving the MLflow UI at /");
            Some(Arc::new(ui))
        }
        None => None,
    };
    let budget = args.buffer_budget_mb << 20;
    let ingest = IngestConfig {
        shards,
        persist_threads: args.persist_threads,
        flush_rows: args.flush_rows.max(1),
        flush_age: Duration::from_secs(args.flush_age_secs.max(1)),
        buffer_budget_bytes: budget,
        compact_after_files: args.compact_after_files.max(2),
        idle_run_after: (args.idle_run_secs > 0).then(|| Duration::from_secs(args.idle_run_secs)),
        ..IngestConfig::default()
    };
    let mut config = EngineConfig::new(&args.data_dir);
    config.wal_sync = args.wal_sync;
    config.wal_segment_bytes = args.wal_segment_mb.max(1) << 20;
    config.overload_wait = Duration::from_secs(args.overload_wait_secs);
    config.max_keys_per_run = args.max_keys_per_run.max(1);
    config.snapshot_interval = args.snapshot_interval;
    config.footer_cache_bytes = args.footer_cache_mb << 20;
    if let Some(url) = &args.store {
        config.store = Some(MetricStore::open(url, args.store_endpoint.as_deref())?);
        config.cache_dir = args.cache_dir.clone();
        config.cache_bytes = args.cache_mb << 20;
    }
    if args.read_only {
        config.replica = Some(ReplicaSettings {
            refresh: Duration::from_secs(args.refresh_secs.max(1)),
            writer: args.writer_url.clone(),
        });
    }
    config.ingest = ingest;
    if let Some(plan) = std::env::var_os(IO_FAULTS_ENV) {
        // Test hook: file operations of the write paths fail as planned.
        let plan = plan
            .to_str()
            .context("STEPSTORE_IO_FAULTS is not UTF-8")?
            .parse::<FaultPlan>()
            .context("cannot read STEPSTORE_IO_FAULTS")?;
        tracing::warn!(plan = ?plan, "STEPSTORE_IO_FAULTS is set: file operations will fail on purpose");
        config.file_io = FileIo::with_faults(plan);
    }
    let engine = Engine::open(config)
        .with_context(|| format!("cannot open data directory {}", args.data_dir.display()))?;
    if auth.mode == AuthMode::Required && engine.tokens().is_empty() {
        // Nobody could do anything: make the first admin token, shown once
        // to whoever started the server.
        let (_, token) = engine
            .tokens()
            .create("admin", Scope::Admin, Vec::new())
            .context("cannot create the first admin token")?;
        println!("auth required and no token existed: created admin token 'admin' (shown once):");
        println!("{token}");
    }

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
        tracing::info!(%address, data_dir = %args.data_dir.display(), wal_sync = %args.wal_sync, shards, auth = ?auth.mode, "serving");
        println!("stepstore listening on http://{address}");
        println!("dashboard: http://{address}/ui");
        let server_config = ServerConfig {
            max_request_bytes: args.max_request_mb.max(1) << 20,
            sql: args.sql_limits.query_config(),
            mlflow_ui,
            auth,
            hygiene: HygieneSettings {
                allowed_hosts: AllowedHosts::from_flag(&args.allowed_hosts, args.listen),
                cors_origins: args.cors_origins.clone(),
            },
            connections: ConnectionLimits {
                max_connections: args.max_connections.max(1),
                header_timeout: args.header_timeout.max(Duration::from_millis(100)),
                body_timeout: args.body_timeout.max(Duration::from_millis(100)),
                ..ConnectionLimits::default()
            },
            max_streams: args.max_streams.max(1),
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

/// The engine on a data directory whose server is stopped, and a runtime
/// to drive an importer with.
fn open_for_import(
    data_dir: &std::path::Path,
) -> anyhow::Result<(std::sync::Arc<Engine>, tokio::runtime::Runtime)> {
    let engine = Engine::open(EngineConfig::new(data_dir))
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok((engine, runtime))
}

fn import_dvc(args: DvcImportArgs) -> anyhow::Result<()> {
    let (engine, runtime) = open_for_import(&args.data_dir)?;
    let imported = runtime.block_on(stepstore::import::dvc::import_lock(
        &engine,
        &args.lockfile,
        &args.experiment,
    ));
    let stopped = engine.shutdown();
    let summary =
        imported.with_context(|| format!("import of {} failed", args.lockfile.display()))?;
    stopped.context("shutdown could not persist every change (the WAL keeps it)")?;
    println!(
        "imported {} stages ({} lineage events) from {} into experiment '{}'",
        summary.runs.len(),
        summary.events,
        args.lockfile.display(),
        args.experiment
    );
    for (stage, run_id) in &summary.runs {
        println!("  {run_id}  {stage}");
    }
    for stage in &summary.skipped {
        println!("skipped {stage}: imported before with the same command and hashes");
    }
    Ok(())
}

fn import_tensorboard(args: TensorboardImportArgs) -> anyhow::Result<()> {
    let (engine, runtime) = open_for_import(&args.data_dir)?;
    let progress = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
        )
        .context("progress bar template")?,
    );
    let imported = runtime.block_on(stepstore::import::tensorboard::import_logdir(
        &engine,
        &args.logdir,
        &args.experiment,
        &progress,
    ));
    let stopped = engine.shutdown();
    let summary =
        imported.with_context(|| format!("import of {} failed", args.logdir.display()))?;
    stopped.context("shutdown could not persist every buffer (the WAL keeps the data)")?;
    println!(
        "imported {} runs, {} points from {} event files into experiment '{}'",
        summary.runs.len(),
        summary.points,
        summary.files,
        args.experiment
    );
    for (name, run_id) in &summary.runs {
        println!("  {run_id}  {name}");
    }
    for name in &summary.skipped_existing {
        println!("skipped {name}: the experiment already has a run of that name");
    }
    for name in &summary.without_scalars {
        println!("skipped {name}: no scalars");
    }
    for (tag, key) in &summary.renamed_tags {
        println!("tag '{tag}' imported as key '{key}'");
    }
    for tag in &summary.skipped_tags {
        println!("tag '{tag}' skipped: no valid key can be made of it");
    }
    for path in &summary.truncated_files {
        println!("{} ends inside a record; read up to it", path.display());
    }
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
