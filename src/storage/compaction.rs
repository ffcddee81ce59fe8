//! Compaction: merges a run's metric files into one, key by key, so memory
//! holds one key's points at a time rather than the whole run.

use std::path::Path;
use std::sync::Arc;

use super::StorageError;
use super::columns::SortedColumns;
use super::persisted::PersistedFile;
use super::reader::KeySegments;
use super::schema::ROW_GROUP_ROWS;
use super::writer::{MetricFileWriter, WrittenFile};
use crate::model::MetricSeries;

/// Merges `inputs` (in sequence order) into a new file at `output`. Points
/// with equal `(key, step, timestamp)` keep their input order. The new
/// file's footer lists the inputs it replaces.
pub fn compact_files(
    inputs: &[Arc<PersistedFile>],
    output: &Path,
) -> Result<WrittenFile, StorageError> {
    let mut readers = Vec::with_capacity(inputs.len());
    let mut heads = Vec::with_capacity(inputs.len());
    for input in inputs {
        let mut segments = KeySegments::open(input.path(), &input.footer()?)?;
        heads.push(segments.next_segment()?);
        readers.push(segments);
    }
    let mut writer = MetricFileWriter::create(output)?;
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
    writer.finish(lsn_ranges, compacted_from)
}
