//! Authentication and authorization: tokens with a scope (`read`, `write`,
//! `admin`), optionally limited to experiments ([`store`], [`token`]),
//! and the principal a request acts as. The HTTP layer
//! (`server::auth`) decides what scope each request needs and checks it
//! before any handler runs.

pub mod store;
pub mod token;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error_kind::{Classify, ErrorKind};
use crate::model::ExperimentId;

pub use store::{TokenRecord, TokenStore};

/// What a token may do; each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every read: GETs, searches, SQL, scalars, streams.
    Read,
    /// Reads, and logging metrics, params and tags, creating and updating
    /// runs and experiments.
    Write,
    /// Writes, and deleting and restoring experiments and runs, and
    /// managing tokens.
    Admin,
}

impl Scope {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<Scope, AuthError> {
        match text {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(AuthError::InvalidScope(other.chars().take(40).collect())),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (never its secret).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The experiments it is limited to; `None`: all.
    pub experiments: Option<Arc<BTreeSet<ExperimentId>>>,
}

impl Principal {
    /// Everything allowed: the principal of a server without
    /// authentication.
    pub fn unrestricted() -> Principal {
        Principal {
            name: String::new(),
            scope: Scope::Admin,
            experiments: None,
        }
    }

    /// Whether the principal has `scope` (or a wider one).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scope >= scope
    }

    /// Whether the principal may see and change experiment `id`.
    pub fn can_see(&self, id: ExperimentId) -> bool {
        self.experiments
            .as_ref()
            .is_none_or(|allowed| allowed.contains(&id))
    }

    /// Whether the principal is limited to some experiments.
    pub fn is_limited(&self) -> bool {
        self.experiments.is_some()
    }

    /// Fails unless the principal may see and change experiment `id`.
    pub fn check_experiment(&self, id: ExperimentId) -> Result<(), AccessDenied> {
        if self.can_see(id) {
            Ok(())
        } else {
            Err(AccessDenied::Experiment {
                token: self.name.clone(),
                experiment: id,
            })
        }
    }

    /// Fails when the principal is limited to experiments: it may not make
    /// new ones (they would be outside its limits) or manage tokens.
    pub fn check_unlimited(&self, what: &'static str) -> Result<(), AccessDenied> {
        if self.is_limited() {
            Err(AccessDenied::Limited {
                token: self.name.clone(),
                what,
            })
        } else {
            Ok(())
        }
    }
}

/// A request for something outside its token's experiments (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    /// The experiment (or a run of it) is outside the token's limits.
    #[error("token '{token}' is not allowed to access experiment {experiment}")]
    Experiment {
        /// The token's name.
        token: String,
        /// The experiment.
        experiment: ExperimentId,
    },
    /// Something only an unlimited token may do.
    #[error("token '{token}' is limited to some experiments, so it may not {what}")]
    Limited {
        /// The token's name.
        token: String,
        /// What was refused.
        what: &'static str,
    },
}

impl Classify for AccessDenied {
    fn kind(&self) -> ErrorKind {
        ErrorKind::PermissionDenied
    }
}

/// Whether requests must authenticate (`--auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Every request is served as if by an admin token.
    Off,
    /// Every request but `/health` (and `/metrics` when public) needs a
    /// token.
    Required,
}

impl std::str::FromStr for AuthMode {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<AuthMode, AuthError> {
        match text {
            "off" => Ok(AuthMode::Off),
            "required" => Ok(AuthMode::Required),
            other => Err(AuthError::InvalidMode(other.chars().take(40).collect())),
        }
    }
}

/// Failures of the token store and of parsing auth settings.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file could not be read or written.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The token file is not JSON of the expected shape.
    #[error("the token file {path} is damaged")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// The token file was written by a newer stepstore.
    #[error(
        "the token file {path} has format version {version}, which this stepstore does not know"
    )]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// The token file could not be encoded.
    #[error("cannot encode the token file")]
    Encode(#[source] serde_json::Error),
    /// A token of that name exists.
    #[error("a token named '{0}' exists already")]
    DuplicateName(String),
    /// No token has that name.
    #[error("no token named '{0}'")]
    UnknownName(String),
    /// A token name outside the rules.
    #[error("invalid token name '{0}': use 1 to 64 letters, digits, '-', '_' or '.'")]
    InvalidName(String),
    /// A scope other than read, write, admin.
    #[error("invalid scope '{0}': expected read, write or admin")]
    InvalidScope(String),
    /// An auth mode other than off, required.
    #[error("invalid auth mode '{0}': expected off or required")]
    InvalidMode(String),
}

impl AuthError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> AuthError {
        AuthError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl Classify for AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            AuthError::DuplicateName(_) => ErrorKind::AlreadyExists,
            AuthError::UnknownName(_) => ErrorKind::NotFound,
            AuthError::InvalidName(_) | AuthError::InvalidScope(_) | AuthError::InvalidMode(_) => {
                ErrorKind::InvalidParameter
            }
            AuthError::Io { .. }
            | AuthError::Corrupt { .. }
            | AuthError::UnknownVersion { .. }
            | AuthError::Encode(_) => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_the_narrower_ones() {
        let write = Principal {
            name: "w".into(),
            scope: Scope::Write,
            experiments: None,
        };
        assert!(write.allows(Scope::Read) && write.allows(Scope::Write));
        assert!(!write.allows(Scope::Admin));
        assert_eq!("admin".parse::<Scope>().unwrap(), Scope::Admin);
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn limited_principals_see_only_their_experiments() {
        let limited = Principal {
            name: "l".into(),
            scope: Scope::Read,
            experiments: Some(Arc::new([ExperimentId::DEFAULT].into_iter().collect())),
        };
        assert!(limited.can_see(ExperimentId::DEFAULT));
        assert!(!limited.can_see(ExperimentId::parse("7").unwrap()));
        assert!(Principal::unrestricted().can_see(ExperimentId::parse("7").unwrap()));
    }
}
