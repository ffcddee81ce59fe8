//! The file operations of every write path (WAL segments, metric files,
//! compaction, catalog snapshots and the directories they live in), made
//! durable and open to fault injection.
//!
//! Every write path creates, writes, syncs and renames through a
//! [`FileIo`] owned by the engine. In production it passes straight to the
//! file system. In tests it carries a [`FaultPlan`] that makes the n-th
//! matching operation fail, as a disk that fills up or a device that
//! reports an I/O error would: the fault tests sweep that n over the write
//! paths and check that nothing acknowledged is lost.
//!
//! Directories: a new directory's entry lives in its parent, so the parent
//! is synced before anything written in the new directory counts as
//! durable.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// A kind of file operation a [`FaultPlan`] can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Creating or opening a file for writing.
    Create,
    /// Writing bytes to a file.
    Write,
    /// Syncing a file or a directory.
    Sync,
    /// Renaming a file into place.
    Rename,
}

impl IoOp {
    fn name(self) -> &'static str {
        match self {
            IoOp::Create => "create",
            IoOp::Write => "write",
            IoOp::Sync => "sync",
            IoOp::Rename => "rename",
        }
    }

    /// The error an injected failure of this operation gives: a full disk
    /// for creating and writing, an I/O error for syncing and renaming.
    fn injected_error(self, path: &Path) -> io::Error {
        let kind = match self {
            IoOp::Create | IoOp::Write => io::ErrorKind::StorageFull,
            IoOp::Sync | IoOp::Rename => io::ErrorKind::Other,
        };
        io::Error::new(
            kind,
            format!("injected {} fault on {}", self.name(), path.display()),
        )
    }
}

impl fmt::Display for IoOp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A fault plan that could not be parsed.
#[derive(Debug, Error)]
#[error(
    "bad I/O fault rule {rule:?}: {reason} (expected OP:N[+][:DIR], OP one of create, write, sync, rename)"
)]
pub struct FaultPlanError {
    rule: String,
    reason: &'static str,
}

/// One rule of a plan: the `nth` operation of kind `op` on a path under a
/// directory named `scope` fails (and every later one too when
/// `persistent`).
#[derive(Debug)]
struct FaultRule {
    op: IoOp,
    scope: Option<String>,
    nth: u64,
    persistent: bool,
    seen: AtomicU64,
}

impl FaultRule {
    fn matches(&self, op: IoOp, path: &Path) -> bool {
        op == self.op
            && self.scope.as_deref().is_none_or(|scope| {
                path.components()
                    .any(|component| component.as_os_str() == scope)
            })
    }
}

/// Which operations fail, parsed from rules like `sync:3:wal` (the third
/// sync of a path with a `wal` directory in it fails) or `write:5+:metrics`
/// (the fifth write under `metrics` and every one after it fail: a disk
/// that stays full). Rules are separated by commas.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Vec<FaultRule>,
    injected: AtomicU64,
}

impl FromStr for FaultPlan {
    type Err = FaultPlanError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut rules = Vec::new();
        for rule in text
            .split(',')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
        {
            let bad = |reason| FaultPlanError {
                rule: rule.to_string(),
                reason,
            };
            let mut parts = rule.splitn(3, ':');
            let op = match parts.next() {
                Some("create") => IoOp::Create,
                Some("write") => IoOp::Write,
                Some("sync") => IoOp::Sync,
                Some("rename") => IoOp::Rename,
                _ => return Err(bad("unknown operation")),
            };
            let count = parts.next().ok_or_else(|| bad("missing N"))?;
            let (count, persistent) = match count.strip_suffix('+') {
                Some(count) => (count, true),
                None => (count, false),
            };
            let nth: u64 = count.parse().map_err(|_| bad("N is not a number"))?;
            if nth == 0 {
                return Err(bad("N counts from 1"));
            }
            let scope = parts.next().map(str::to_string);
            rules.push(FaultRule {
                op,
                scope,
                nth,
                persistent,
                seen: AtomicU64::new(0),
            });
        }
        Ok(FaultPlan {
            rules,
            injected: AtomicU64::new(0),
        })
    }
}

impl FaultPlan {
    /// Counts the operation against every matching rule; an error when a
    /// rule says this one fails.
    fn check(&self, op: IoOp, path: &Path) -> io::Result<()> {
        let mut fail = false;
        for rule in self.rules.iter().filter(|rule| rule.matches(op, path)) {
            let seen = rule.seen.fetch_add(1, Ordering::SeqCst) + 1;
            fail |= seen == rule.nth || (rule.persistent && seen > rule.nth);
        }
        if !fail {
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(%op, path = %path.display(), "injected I/O fault");
        Err(op.injected_error(path))
    }
}

/// The file operations of the write paths; cheap to clone. The default
/// passes every operation to the file system.
#[derive(Clone, Debug, Default)]
pub struct FileIo {
    faults: Option<Arc<FaultPlan>>,
}

impl FileIo {
    /// File operations that fail as `plan` says.
    pub fn with_faults(plan: FaultPlan) -> Self {
        FileIo {
            faults: Some(Arc::new(plan)),
        }
    }

    /// Operations failed on purpose so far (0 without a plan).
    pub fn injected_faults(&self) -> u64 {
        self.faults
            .as_ref()
            .map_or(0, |plan| plan.injected.load(Ordering::SeqCst))
    }

    /// Whether a fault plan is in force.
    pub fn has_faults(&self) -> bool {
        self.faults.is_some()
    }

    fn check(&self, op: IoOp, path: &Path) -> io::Result<()> {
        match &self.faults {
            Some(plan) => plan.check(op, path),
            None => Ok(()),
        }
    }

    /// Creates (or truncates) a file for writing.
    pub(crate) fn create(&self, path: &Path) -> io::Result<File> {
        self.check(IoOp::Create, path)?;
        File::create(path)
    }

    /// Opens a file for appending, creating it when missing.
    pub(crate) fn open_append(&self, path: &Path) -> io::Result<File> {
        self.check(IoOp::Create, path)?;
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Writes all of `bytes` to `file` (at `path`).
    pub(crate) fn write_all(&self, file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.check(IoOp::Write, path)?;
        file.write_all(bytes)
    }

    /// Syncs a file's data and metadata.
    pub(crate) fn sync_all(&self, file: &File, path: &Path) -> io::Result<()> {
        self.check(IoOp::Sync, path)?;
        file.sync_all()
    }

    /// Syncs a file's data (and the metadata needed to read it back).
    pub(crate) fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        self.check(IoOp::Sync, path)?;
        file.sync_data()
    }

    /// Makes the entries of `dir` (new, renamed or removed files) durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(IoOp::Sync, dir)?;
        File::open(dir)?.sync_all()
    }

    /// Renames `from` to `to`, replacing `to`.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(IoOp::Rename, from)?;
        fs::rename(from, to)
    }

    /// Wraps a writer (a Parquet writer's file) so that its writes and
    /// flushes count as operations on `path`.
    pub(crate) fn writer<W: Write>(&self, inner: W, path: &Path) -> CheckedWrite<W> {
        CheckedWrite {
            inner,
            io: self.clone(),
            path: path.to_path_buf(),
        }
    }

    /// Creates `dir` and its missing ancestors, and syncs the parent of
    /// each directory it created (deepest first). Returns whether anything
    /// was created.
    pub(crate) fn create_dir_synced(&self, dir: &Path) -> io::Result<bool> {
        let mut missing = Vec::new();
        let mut current = Some(dir);
        while let Some(path) = current {
            if path.as_os_str().is_empty() || path.exists() {
                break;
            }
            missing.push(path);
            current = path.parent();
        }
        if missing.is_empty() {
            return Ok(false);
        }
        self.check(IoOp::Create, dir)?;
        fs::create_dir_all(dir)?;
        for created in missing {
            if let Some(parent) = created
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            {
                self.sync_dir(parent)?;
            }
        }
        Ok(true)
    }
}

/// A writer whose writes go through a [`FileIo`] (see [`FileIo::writer`]).
pub(crate) struct CheckedWrite<W> {
    inner: W,
    io: FileIo,
    path: std::path::PathBuf,
}

impl<W> CheckedWrite<W> {
    /// The wrapped writer.
    pub(crate) fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for CheckedWrite<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.io.check(IoOp::Write, &self.path)?;
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// [`FileIo::create_dir_synced`] without fault injection, for paths that
/// are not write paths of the engine (the auth token store).
pub(crate) fn create_dir_synced(dir: &Path) -> io::Result<bool> {
    FileIo::default().create_dir_synced(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ancestors_are_created_and_existing_ones_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert!(create_dir_synced(&deep).unwrap());
        assert!(deep.is_dir());
        assert!(!create_dir_synced(&deep).unwrap());
        assert!(!create_dir_synced(dir.path()).unwrap());
        // A file where a directory should be is an error, not a panic.
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(create_dir_synced(&dir.path().join("file/d")).is_err());
    }

    #[test]
    fn a_plan_fails_the_nth_matching_operation_once_or_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        let other = dir.path().join("metrics");
        std::fs::create_dir_all(&wal).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let io = FileIo::with_faults("sync:2:wal,write:3+".parse().unwrap());
        let mut file = io.create(&wal.join("a")).unwrap();
        // Syncs outside `wal` do not count.
        io.sync_dir(&other).unwrap();
        io.sync_all(&file, &wal.join("a")).unwrap();
        let error = io.sync_all(&file, &wal.join("a")).unwrap_err();
        assert!(error.to_string().contains("injected sync fault"), "{error}");
        io.sync_all(&file, &wal.join("a")).unwrap();
        // Writes anywhere count; the third and every later one fail.
        io.write_all(&mut file, &wal.join("a"), b"1").unwrap();
        io.write_all(&mut file, &other.join("b"), b"2").unwrap();
        for _ in 0..3 {
            let error = io.write_all(&mut file, &wal.join("a"), b"3").unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        }
        assert_eq!(io.injected_faults(), 4);
        assert_eq!(std::fs::read(wal.join("a")).unwrap(), b"12");
        assert_eq!(FileIo::default().injected_faults(), 0);
    }

    #[test]
    fn bad_plans_are_refused_with_the_rule_named() {
        for bad in ["fsync:1", "write", "write:x", "write:0:wal", "rename:-1"] {
            let error = bad.parse::<FaultPlan>().unwrap_err().to_string();
            assert!(error.contains(bad.split(',').next().unwrap()), "{error}");
        }
        assert!("".parse::<FaultPlan>().unwrap().rules.is_empty());
    }
}
