//! Compaction: merges a run's metric files into one, key by key, so memory
//! holds one key's points at a time rather than the whole run.

use std::path::Path;
use std::sync::Arc;

use super::StorageError;
use super::columns::SortedColumns;
use super::key_reader::KeySegments;
use super::persisted::PersistedFile;
use super::reader::load_footer;
use super::schema::ROW_GROUP_ROWS;
use super::writer::{MetricFileWriter, WrittenFile};
use crate::durable_fs::FileIo;
use crate::model::MetricSeries;

/// Merges `inputs` (in sequence order) into a new file at `output`. Points
/// with equal `(key, step, timestamp)` keep their input order. The new
/// file's footer lists the inputs it replaces. File operations go through
/// `io`.
pub fn compact_files(
    inputs: &[Arc<PersistedFile>],
    output: &Path,
    io: &FileIo,
) -> Result<WrittenFile, StorageError> {
    let mut readers = Vec::with_capacity(inputs.len());
    let mut heads = Vec::with_capacity(inputs.len());
    for input in inputs {
        let (footer, data) = input.open_data()?;
        let mut segments = KeySegments::open(data, &footer)?;
        heads.push(segments.next_segment()?);
        readers.push(segments);
    }
    let mut writer = MetricFileWriter::create_with(output, io)?;
    let mut pending = SortedColumns::default();
    while let Some(key) = heads.iter().flatten().map(|(key, _)| key).min().cloned() {
        let mut merged = MetricSeries::default();
        for (head, reader) in heads.iter_mut().zip(readers.iter_mut()) {
            if head.as_ref().is_some_and(|(head_key, _)| *head_key == key) {
                if let Some((_, series)) = head.take() {
                    merged.extend(&series);
                }
                *head = reader.next_segment()?;
            }
        }
        merged.sort_by_step_and_time();
        pending.push_key_rows(&key, &merged.steps, &merged.timestamps, &merged.values);
        if pending.len() >= ROW_GROUP_ROWS {
            writer.write(std::mem::take(&mut pending))?;
        }
    }
    writer.write(pending)?;
    let lsn_ranges = inputs
        .iter()
        .flat_map(|input| input.lsn_ranges().iter().copied())
        .collect();
    let compacted_from = inputs.iter().map(|input| input.seq()).collect();
    let written = writer.finish(lsn_ranges, compacted_from)?;
    let expected: u64 = inputs.iter().map(|input| input.rows()).sum();
    if let Err(error) = verify_output(&written.path, expected) {
        // Its footer names the inputs as replaced: it must not survive to
        // the next start, or the inputs would be deleted for it.
        remove_output(&written.path, io)?;
        return Err(error);
    }
    Ok(written)
}

/// Reads the new file's footer back from disk and checks that it holds
/// every input row, before anything may delete the inputs.
fn verify_output(path: &Path, expected_rows: u64) -> Result<(), StorageError> {
    let (footer, _) = load_footer(path)?;
    let rows = footer.metadata().file_metadata().num_rows().max(0) as u64;
    if rows != expected_rows {
        return Err(StorageError::Metadata {
            path: path.to_path_buf(),
            reason: format!(
                "the compaction output holds {rows} rows where its inputs hold {expected_rows}; \
                 it was removed and the inputs kept"
            ),
        });
    }
    Ok(())
}

/// Removes a compaction output that must not count (its footer claims the
/// inputs), syncing its directory through `io`.
pub fn remove_output(path: &Path, io: &FileIo) -> Result<(), StorageError> {
    std::fs::remove_file(path).map_err(|source| StorageError::io("remove", path, source))?;
    if let Some(dir) = path.parent() {
        io.sync_dir(dir)
            .map_err(|source| StorageError::io("sync directory", dir, source))?;
    }
    Ok(())
}

/// Test files: a metric file of key `k` with one point per step.
#[cfg(test)]
pub(crate) mod test_files {
    use super::*;
    use crate::storage::MetricFileWriter;
    use crate::storage::columns::SortedColumns;

    /// Writes file `lsn` (also its sequence number) at `path`, holding one
    /// point of key `k` per step and covering WAL record `lsn`.
    pub(crate) fn write_file(
        path: &Path,
        steps: std::ops::Range<i64>,
        lsn: u64,
    ) -> Arc<PersistedFile> {
        let columns = SortedColumns::from_points(steps.map(|step| ("k", step, step, step as f64)));
        let mut writer = MetricFileWriter::create(path).unwrap();
        writer.write(columns).unwrap();
        writer.finish(vec![(lsn, lsn)], vec![]).unwrap();
        Arc::new(PersistedFile::open(lsn, path).unwrap().0)
    }
}

#[cfg(test)]
mod tests {
    use super::test_files::write_file;
    use super::*;

    #[test]
    fn an_output_is_checked_against_its_inputs_and_removed_when_short() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = vec![
            write_file(&dir.path().join("00000001.parquet"), 0..10, 1),
            write_file(&dir.path().join("00000002.parquet"), 10..25, 2),
        ];
        let output = dir.path().join("00000003.parquet");
        let written = compact_files(&inputs, &output, &FileIo::default()).unwrap();
        assert_eq!(written.rows, 25);
        verify_output(&output, 25).unwrap();
        // A count that does not match is an error naming both counts.
        let error = verify_output(&output, 26).unwrap_err().to_string();
        assert!(error.contains("25 rows") && error.contains("26"), "{error}");
        // An output whose footer cannot be read is an error too.
        let length = std::fs::metadata(&output).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&output)
            .unwrap()
            .set_len(length - 8)
            .unwrap();
        assert!(verify_output(&output, 25).is_err());
        remove_output(&output, &FileIo::default()).unwrap();
        assert!(!output.exists());
    }
}
