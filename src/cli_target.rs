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
