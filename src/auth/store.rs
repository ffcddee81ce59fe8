//! The token store: named tokens with a scope and, optionally, the
//! experiments they are limited to, kept in `<data-dir>/auth/tokens.json`
//! (written atomically: temp file, fsync, rename, directory fsync) with
//! the hash of each secret, never the secret. Owned by the engine; read
//! on every authenticated request, written only by token creation and
//! revocation.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::token::{self, SecretHash};
use super::{AuthError, Principal, Scope};
use crate::model::{ExperimentId, now_millis};

const FILE: &str = "tokens.json";
const FORMAT_VERSION: u32 = 1;
/// Longest token name.
pub const MAX_NAME_LENGTH: usize = 64;

/// A token as the store keeps it (its secret's hash, not the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The id inside the token's text.
    pub id: String,
    /// The name it was created with (unique).
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The experiments it is limited to; empty: all.
    #[serde(default)]
    pub experiments: Vec<ExperimentId>,
    /// When it was created, ms since the epoch.
    pub created: i64,
    /// SHA-256 of the secret, hex.
    hash: String,
}

impl TokenRecord {
    fn hash_bytes(&self) -> Option<SecretHash> {
        let mut out = [0u8; 32];
        if self.hash.len() != 64 {
            return None;
        }
        for (index, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(self.hash.get(index * 2..index * 2 + 2)?, 16).ok()?;
        }
        Some(out)
    }

    fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            scope: self.scope,
            experiments: (!self.experiments.is_empty())
                .then(|| Arc::new(self.experiments.iter().copied().collect::<BTreeSet<_>>())),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<TokenRecord>,
}

/// The tokens of one data directory.
pub struct TokenStore {
    path: PathBuf,
    tokens: RwLock<Arc<Vec<TokenRecord>>>,
    /// Serialises writers (create, revoke) so none loses another's change.
    writer: Mutex<()>,
}

impl TokenStore {
    /// Opens the store in `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<TokenStore, AuthError> {
        crate::durable_fs::create_dir_synced(dir)
            .map_err(|source| AuthError::io("create", dir, source))?;
        let path = dir.join(FILE);
        let tokens = match fs::read(&path) {
            Ok(bytes) => {
                let file: TokenFile =
                    serde_json::from_slice(&bytes).map_err(|source| AuthError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if file.version != FORMAT_VERSION {
                    return Err(AuthError::UnknownVersion {
                        path,
                        version: file.version,
                    });
                }
                file.tokens
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(AuthError::io("read", &path, source)),
        };
        Ok(TokenStore {
            path,
            tokens: RwLock::new(Arc::new(tokens)),
            writer: Mutex::new(()),
        })
    }

    fn snapshot(&self) -> Arc<Vec<TokenRecord>> {
        match self.tokens.read() {
            Ok(tokens) => Arc::clone(&tokens),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Vec<TokenRecord> {
        self.snapshot().as_ref().clone()
    }

    /// Whether no token exists.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Makes a token; returns its record and its text (to show once).
    pub fn create(
        &self,
        name: &str,
        scope: Scope,
        experiments: Vec<ExperimentId>,
    ) -> Result<(TokenRecord, String), AuthError> {
        validate_name(name)?;
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let current = self.snapshot();
        if current.iter().any(|record| record.name == name) {
            return Err(AuthError::DuplicateName(name.to_string()));
        }
        let new = token::generate();
        let record = TokenRecord {
            id: new.id,
            name: name.to_string(),
            scope,
            experiments: experiments
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            created: now_millis(),
            hash: new.hash.iter().map(|byte| format!("{byte:02x}")).collect(),
        };
        let mut next = current.as_ref().clone();
        next.push(record.clone());
        self.persist(next)?;
        Ok((record, new.text))
    }

    /// Removes the token named `name`; it stops working at once.
    pub fn revoke(&self, name: &str) -> Result<TokenRecord, AuthError> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let current = self.snapshot();
        let Some(position) = current.iter().position(|record| record.name == name) else {
            return Err(AuthError::UnknownName(name.to_string()));
        };
        let mut next = current.as_ref().clone();
        let removed = next.remove(position);
        self.persist(next)?;
        Ok(removed)
    }

    /// Writes `tokens` durably, then makes them current.
    fn persist(&self, tokens: Vec<TokenRecord>) -> Result<(), AuthError> {
        let file = TokenFile {
            version: FORMAT_VERSION,
            tokens,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(AuthError::Encode)?;
        let temp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut out = File::create(&temp)?;
            out.write_all(&bytes)?;
            out.sync_all()?;
            fs::rename(&temp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|source| AuthError::io("write", &self.path, source))?;
        let mut current = self
            .tokens
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        *current = Arc::new(file.tokens);
        Ok(())
    }

    /// The principal a presented token stands for, if it is a live token.
    pub fn verify(&self, presented: &str) -> Option<Principal> {
        let (id, secret) = token::parse(presented.trim())?;
        let hash = token::hash_secret(secret);
        let tokens = self.snapshot();
        let record = tokens.iter().find(|record| record.id == id)?;
        let stored = record.hash_bytes()?;
        token::hashes_equal(&hash, &stored).then(|| record.principal())
    }
}

fn validate_name(name: &str) -> Result<(), AuthError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LENGTH
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(AuthError::InvalidName(name.chars().take(80).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_revoked_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        assert!(store.is_empty());
        let (record, text) = store
            .create("ci", Scope::Write, vec![ExperimentId::DEFAULT])
            .unwrap();
        assert_eq!(record.scope, Scope::Write);
        let principal = store.verify(&text).unwrap();
        assert_eq!(principal.name, "ci");
        assert!(principal.can_see(ExperimentId::DEFAULT));
        assert!(!principal.can_see(ExperimentId::parse("3").unwrap()));
        let (_, admin) = store.create("root", Scope::Admin, Vec::new()).unwrap();
        assert!(store.verify(&admin).unwrap().experiments.is_none());

        // The file holds hashes, not the secrets.
        let file = fs::read_to_string(dir.path().join(FILE)).unwrap();
        let (_, secret) = token::parse(&text).unwrap();
        assert!(!file.contains(secret));

        let reopened = TokenStore::open(dir.path()).unwrap();
        assert_eq!(reopened.verify(&text).unwrap().name, "ci");
        reopened.revoke("ci").unwrap();
        assert!(reopened.verify(&text).is_none());
        assert!(
            TokenStore::open(dir.path())
                .unwrap()
                .verify(&text)
                .is_none()
        );
        assert!(reopened.verify(&admin).is_some());
    }

    #[test]
    fn wrong_secrets_names_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let (record, text) = store.create("a", Scope::Read, Vec::new()).unwrap();
        let forged = format!("{}{}_{}", token::PREFIX, record.id, "x".repeat(43));
        assert!(store.verify(&forged).is_none());
        assert!(store.verify(&text[..text.len() - 1]).is_none());
        assert!(store.verify("").is_none());
        assert!(matches!(
            store.create("a", Scope::Read, Vec::new()),
            Err(AuthError::DuplicateName(_))
        ));
        for name in ["", "has space", "ünï", &"x".repeat(65)] {
            assert!(matches!(
                store.create(name, Scope::Read, Vec::new()),
                Err(AuthError::InvalidName(_))
            ));
        }
        assert!(matches!(
            store.revoke("nope"),
            Err(AuthError::UnknownName(_))
        ));
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let error = TokenStore::open(dir.path()).err().unwrap();
        assert!(error.to_string().contains("tokens.json"), "{error}");
    }
}
