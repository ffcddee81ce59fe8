//! What an offline-or-server command acts on (`stepstore sql`, `stepstore
//! gc`): a data directory opened in-process, or a running server.

use std::path::PathBuf;

use clap::Args;

/// `--data-dir`, or `--server` with `--token`.
#[derive(Args)]
pub struct Target {
    /// Data directory to open offline (default ./stepstore-data). It must
    /// not be in use by a running server: reach that one with --server.
    #[arg(long, conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Base URL of a running server, e.g. http://127.0.0.1:5000.
    #[arg(long, env = "STEPSTORE_SERVER")]
    pub server: Option<String>,
    /// Token for --server (sql: a read token; gc: an admin token not
    /// limited to experiments).
    #[arg(long, env = "STEPSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Target {
    /// The data directory (default ./stepstore-data).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./stepstore-data"))
    }
}

/// Opens the engine on `config`'s data directory for an offline command;
/// when a server holds it, the error says to use `--server` (`instead`
/// tells how).
pub fn open_offline(
    config: stepstore::engine::EngineConfig,
    instead: &str,
) -> anyhow::Result<std::sync::Arc<stepstore::engine::Engine>> {
    use anyhow::Context;
    let data_dir = config.data_dir.clone();
    if !data_dir.is_dir() {
        anyhow::bail!("no data directory at {}", data_dir.display());
    }
    match stepstore::engine::Engine::open(config) {
        Ok(engine) => Ok(engine),
        Err(stepstore::engine::EngineError::DataDirInUse(dir)) => anyhow::bail!(
            "the data directory {dir} is in use by a running stepstore server; {instead}"
        ),
        Err(error) => {
            Err(error).with_context(|| format!("cannot open data directory {}", data_dir.display()))
        }
    }
}

/// A POST of `path` to the server at `url`, with `token` as its bearer;
/// returns the endpoint too, for messages.
pub fn server_post(
    url: &str,
    token: Option<&str>,
    path: &str,
) -> anyhow::Result<(String, reqwest::blocking::RequestBuilder)> {
    use anyhow::Context;
    let endpoint = format!("{}{path}", url.trim_end_matches('/'));
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .context("cannot create the HTTP client")?;
    let mut request = client.post(&endpoint);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok((endpoint, request))
}
