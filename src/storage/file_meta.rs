//! What stepstore records in each metric file's footer (Parquet key-value
//! metadata): the WAL ranges the file covers, a summary per key, and which
//! files a compacted file replaced.

use parquet::file::metadata::KeyValue;
use serde::{Deserialize, Serialize};

use crate::model::KeySummary;
use crate::wal::Lsn;

/// Footer key holding the JSON of [`FileMetadata`].
pub const METADATA_KEY: &str = "stepstore.metadata";
/// Version of the metadata layout.
pub const FORMAT_VERSION: u32 = 1;

/// Footer metadata of one metric file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileMetadata {
    /// Layout version.
    pub format_version: u32,
    /// Inclusive LSN ranges of the WAL records whose points the file holds.
    /// Replay skips records of this run inside these ranges.
    pub lsn_ranges: Vec<(Lsn, Lsn)>,
    /// Summary of every key in the file, in key order.
    pub keys: Vec<(String, KeySummary)>,
    /// Sequence numbers of the files this one replaced by compaction.
    pub compacted_from: Vec<u64>,
}

impl FileMetadata {
    /// The footer entry.
    pub fn to_key_value(&self) -> Result<KeyValue, serde_json::Error> {
        Ok(KeyValue::new(
            METADATA_KEY.to_string(),
            serde_json::to_string(self)?,
        ))
    }

    /// Reads the entry back from a file's key-value metadata.
    pub fn from_key_values(entries: Option<&Vec<KeyValue>>) -> Result<Self, String> {
        let entry = entries
            .into_iter()
            .flatten()
            .find(|entry| entry.key == METADATA_KEY)
            .ok_or_else(|| format!("no '{METADATA_KEY}' entry in the footer"))?;
        let text = entry
            .value
            .as_deref()
            .ok_or_else(|| format!("empty '{METADATA_KEY}' entry"))?;
        let metadata: FileMetadata =
            serde_json::from_str(text).map_err(|error| error.to_string())?;
        if metadata.format_version != FORMAT_VERSION {
            return Err(format!(
                "metadata version {} is not supported (expected {FORMAT_VERSION})",
                metadata.format_version
            ));
        }
        Ok(metadata)
    }
}

/// Merges inclusive ranges that overlap or touch, in LSN order.
pub fn normalise_ranges(mut ranges: Vec<(Lsn, Lsn)>) -> Vec<(Lsn, Lsn)> {
    ranges.sort_unstable();
    let mut merged: Vec<(Lsn, Lsn)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Whether `lsn` falls in one of the sorted, disjoint `ranges`.
pub fn ranges_contain(ranges: &[(Lsn, Lsn)], lsn: Lsn) -> bool {
    let position = ranges.partition_point(|&(start, _)| start <= lsn);
    position > 0 && ranges[position - 1].1 >= lsn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_the_footer_entry() {
        let metadata = FileMetadata {
            format_version: FORMAT_VERSION,
            lsn_ranges: vec![(3, 9)],
            keys: vec![("loss".into(), KeySummary::of_point(1, 2, f64::NAN))],
            compacted_from: vec![1, 2],
        };
        let entry = metadata.to_key_value().unwrap();
        let back = FileMetadata::from_key_values(Some(&vec![entry])).unwrap();
        assert_eq!(back.lsn_ranges, metadata.lsn_ranges);
        assert_eq!(back.compacted_from, metadata.compacted_from);
        assert!(back.keys[0].1.latest_value.is_nan());
        assert!(FileMetadata::from_key_values(None).is_err());
    }

    #[test]
    fn ranges_merge_and_answer_membership() {
        let ranges = normalise_ranges(vec![(10, 12), (1, 3), (4, 5), (20, 20), (11, 15)]);
        assert_eq!(ranges, vec![(1, 5), (10, 15), (20, 20)]);
        for lsn in [1, 5, 10, 15, 20] {
            assert!(ranges_contain(&ranges, lsn), "{lsn}");
        }
        for lsn in [0, 6, 9, 16, 19, 21] {
            assert!(!ranges_contain(&ranges, lsn), "{lsn}");
        }
    }
}
