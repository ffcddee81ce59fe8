//! `stepstore token create|list|revoke`: manages the access tokens of a
//! data directory, offline (`--data-dir`, the server stopped) or through a
//! running server's admin API (`--server` with an admin `--token`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use stepstore::auth::Scope;
use stepstore::engine::{Engine, EngineConfig, EngineError};
use stepstore::model::ExperimentId;

/// Token commands.
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it once (only its hash is kept).
    Create(CreateArgs),
    /// List tokens: name, scope, experiments, creation time.
    List(Target),
    /// Revoke a token by name: it stops working at once.
    Revoke(RevokeArgs),
}

/// Where the tokens are: a data directory, or a server.
#[derive(Args)]
pub struct Target {
    /// Data directory (default ./stepstore-data); the server on it must be
    /// stopped (use --server otherwise).
    #[arg(long, env = "STEPSTORE_DATA_DIR", conflicts_with = "server")]
    data_dir: Option<PathBuf>,
    /// Base URL of a running server (needs an admin --token).
    #[arg(long, env = "STEPSTORE_SERVER")]
    server: Option<String>,
    /// Admin token for --server.
    #[arg(long, env = "STEPSTORE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Arguments of `token create`.
#[derive(Args)]
pub struct CreateArgs {
    /// A unique name (letters, digits, '-', '_', '.').
    #[arg(long)]
    name: String,
    /// read, write or admin.
    #[arg(long)]
    scope: Scope,
    /// Limit the token to these experiments (repeat for several).
    #[arg(long = "experiment", value_name = "ID")]
    experiments: Vec<String>,
    #[command(flatten)]
    target: Target,
}

/// Arguments of `token revoke`.
#[derive(Args)]
pub struct RevokeArgs {
    /// The token's name.
    name: String,
    #[command(flatten)]
    target: Target,
}

/// Runs a token command.
pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => create(args),
        TokenCommand::List(target) => list(target),
        TokenCommand::Revoke(args) => revoke(args),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let answer = match &args.target.server {
        Some(server) => request(
            &args.target,
            server,
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"name": args.name, "scope": args.scope, "experiments": args.experiments})),
        )?,
        None => with_engine(&args.target, |engine| {
            let mut experiments = Vec::new();
            for text in &args.experiments {
                let id = ExperimentId::parse(text)
                    .with_context(|| format!("invalid experiment id '{text}'"))?;
                engine
                    .experiment(id)
                    .with_context(|| format!("no experiment {text}"))?;
                experiments.push(id);
            }
            let (record, token) = engine
                .tokens()
                .create(&args.name, args.scope, experiments)?;
            Ok(json!({"name": record.name, "scope": record.scope, "token": token}))
        })?,
    };
    let token = answer["token"]
        .as_str()
        .context("the answer holds no token")?;
    eprintln!(
        "created {} token '{}'; it is shown only this once:",
        answer["scope"].as_str().unwrap_or(""),
        answer["name"].as_str().unwrap_or("")
    );
    println!("{token}");
    Ok(())
}

fn list(target: Target) -> anyhow::Result<()> {
    let answer = match &target.server {
        Some(server) => request(
            &target,
            server,
            reqwest::Method::GET,
            "/api/v1/tokens",
            None,
        )?,
        None => with_engine(&target, |engine| {
            let tokens: Vec<Value> = engine
                .tokens()
                .list()
                .iter()
                .map(|record| {
                    json!({
                        "name": record.name,
                        "scope": record.scope,
                        "experiments": record.experiments.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "created": record.created,
                    })
                })
                .collect();
            Ok(json!({ "tokens": tokens }))
        })?,
    };
    println!(
        "{:<24} {:<6} {:<24} created",
        "name", "scope", "experiments"
    );
    for token in answer["tokens"].as_array().into_iter().flatten() {
        let experiments: Vec<&str> = token["experiments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let created = token["created"].as_i64().unwrap_or(0);
        let created =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(created.max(0) as u64);
        println!(
            "{:<24} {:<6} {:<24} {}",
            token["name"].as_str().unwrap_or(""),
            token["scope"].as_str().unwrap_or(""),
            if experiments.is_empty() {
                "all".to_string()
            } else {
                experiments.join(",")
            },
            humantime::format_rfc3339_seconds(created)
        );
    }
    Ok(())
}

fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    match &args.target.server {
        Some(server) => {
            request(
                &args.target,
                server,
                reqwest::Method::DELETE,
                &format!("/api/v1/tokens/{}", args.name),
                None,
            )?;
        }
        None => {
            with_engine(&args.target, |engine| {
                engine.tokens().revoke(&args.name)?;
                Ok(Value::Null)
            })?;
        }
    }
    eprintln!("revoked token '{}'", args.name);
    Ok(())
}

/// Opens the data directory, runs `work`, shuts down.
fn with_engine(
    target: &Target,
    work: impl FnOnce(&Engine) -> anyhow::Result<Value>,
) -> anyhow::Result<Value> {
    let data_dir = target
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("./stepstore-data"));
    let engine = match Engine::open(EngineConfig::new(&data_dir)) {
        Ok(engine) => engine,
        Err(EngineError::DataDirInUse(dir)) => bail!(
            "the data directory {dir} is in use by a running stepstore server; manage its \
             tokens through it: --server http://<its address> --token <an admin token>"
        ),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot open data directory {}", data_dir.display()));
        }
    };
    let outcome = work(&engine);
    engine
        .shutdown()
        .context("cannot close the data directory")?;
    outcome
}

/// One admin API request to a server.
fn request(
    target: &Target,
    server: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let client = reqwest::blocking::Client::new();
    let mut request = client.request(method, &url);
    if let Some(token) = &target.token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let answer: Value = response
        .json()
        .with_context(|| format!("{url} did not answer JSON"))?;
    if !status.is_success() {
        bail!(
            "{url}: {status}: {}",
            answer["message"].as_str().unwrap_or("(no message)")
        );
    }
    Ok(answer)
}
