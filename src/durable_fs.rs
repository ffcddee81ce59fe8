//! Directory creation that survives a power loss: a new directory's entry
//! lives in its parent, so the parent is synced before anything written
//! in the new directory counts as durable. Used by every module that
//! creates directories in the data directory (WAL, catalog, tokens, metric
//! files).

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Creates `dir` and its missing ancestors, and syncs the parent of each
/// directory it created (deepest first). Returns whether anything was
/// created.
pub(crate) fn create_dir_synced(dir: &Path) -> io::Result<bool> {
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
    fs::create_dir_all(dir)?;
    for created in missing {
        if let Some(parent) = created
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(true)
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
}
