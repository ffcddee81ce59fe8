//! `stepstore gc`: removes for good the runs and experiments deleted more
//! than `--older-than` ago, with their metric files, as `mlflow gc` does:
//! offline on a data directory (`--data-dir`) or through a running server
//! (`--server URL`, an admin token). It only prints what it would remove
//! unless `--yes` is given.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use stepstore::engine::EngineConfig;
use stepstore::engine::retention::GcReport;

/// Arguments of `stepstore gc`.
#[derive(Args)]
pub struct GcArgs {
    /// Remove what was deleted at least this long ago, e.g. 30d, 12h
    /// (default: everything deleted).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// Remove for good (without it, only print what would be removed).
    #[arg(long)]
    yes: bool,
    #[command(flatten)]
    target: crate::cli_target::Target,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the gc and prints its report.
pub fn run(args: GcArgs) -> anyhow::Result<()> {
    let report: Value = match &args.target.server {
        Some(url) => gc_server(
            url,
            args.target.token.as_deref(),
            args.older_than,
            !args.yes,
        )?,
        None => serde_json::to_value(gc_offline(
            args.target.data_dir(),
            args.older_than,
            !args.yes,
        )?)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(())
}

fn gc_offline(data_dir: PathBuf, older_than: Duration, dry_run: bool) -> anyhow::Result<GcReport> {
    let engine = crate::cli_target::open_offline(
        EngineConfig::new(&data_dir),
        "run gc through it with --server http://<its address> (an admin token)",
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcome = runtime.block_on(engine.gc(older_than, dry_run));
    engine.shutdown()?;
    Ok(outcome?)
}

fn gc_server(
    url: &str,
    token: Option<&str>,
    older_than: Duration,
    dry_run: bool,
) -> anyhow::Result<Value> {
    let (endpoint, request) = crate::cli_target::server_post(url, token, "/api/v1/admin/gc")?;
    let body = json!({
        "older_than": humantime::format_duration(older_than).to_string(),
        "dry_run": dry_run,
    });
    let response = request
        .json(&body)
        .send()
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .with_context(|| format!("cannot read the answer of {endpoint}"))?;
    if !status.is_success() {
        let message = answer
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        bail!("the server refused the gc ({status}): {message}");
    }
    Ok(answer)
}

/// The report for a person: one line per run and experiment, then the
/// totals.
fn summary(report: &Value) -> String {
    let dry_run = report["dry_run"].as_bool().unwrap_or(true);
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    let runs = report["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let experiments = report["experiments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for run in runs {
        let name = run["run_name"].as_str().unwrap_or("");
        let note = if run["in_catalog"].as_bool() == Some(false) {
            " (files of a run the catalog does not know)"
        } else {
            ""
        };
        out.push_str(&format!(
            "run {} {name} (experiment {}){note}\n",
            run["run_id"].as_str().unwrap_or("?"),
            run["experiment_id"].as_str().unwrap_or("?"),
        ));
    }
    for experiment in experiments {
        out.push_str(&format!(
            "experiment {} {}\n",
            experiment["experiment_id"].as_str().unwrap_or("?"),
            experiment["name"].as_str().unwrap_or(""),
        ));
    }
    out.push_str(&format!(
        "gc {verb} {} runs, {} experiments, {} metric files ({} bytes){}\n",
        runs.len(),
        experiments.len(),
        report["files"].as_u64().unwrap_or(0),
        report["bytes"].as_u64().unwrap_or(0),
        if dry_run {
            "; run again with --yes to remove them"
        } else {
            ""
        },
    ));
    out
}
