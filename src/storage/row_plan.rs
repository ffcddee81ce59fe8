//! Which rows and bytes of a metric file a read needs, worked out from the
//! footer alone: where a key's rows lie ([`KeyRows`], from the block
//! aggregates, else the key summaries, else the row groups' statistics),
//! the row groups and row selection that cover a set of file rows
//! ([`RowGroupSelection`]), and the byte spans of the pages holding them
//! ([`page_spans`]). The readers in [`super::reader`] carry the plans out;
//! `scalars` and `query` decide what to ask for.

use std::ops::Range;

use parquet::arrow::arrow_reader::RowSelection;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;

use super::aggregates::BlockAggregate;
use super::file_meta::FileMetadata;
use super::footer_cache::FileFooter;

/// Leaf column index of `key` in a metric file.
pub(crate) const KEY_LEAF: usize = 0;
/// Leaf column index of `step`.
pub(crate) const STEP_LEAF: usize = 1;
/// Leaf column index of `timestamp`.
pub(crate) const TIMESTAMP_LEAF: usize = 2;
/// Leaf column index of `value`.
pub(crate) const VALUE_LEAF: usize = 3;

/// Inclusive step bounds of a read (`None`: unbounded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepBounds {
    /// Smallest step wanted.
    pub lower: Option<i64>,
    /// Greatest step wanted.
    pub upper: Option<i64>,
}

impl StepBounds {
    /// Whether no step of `[min, max]` is wanted.
    pub fn excludes_range(&self, min: i64, max: i64) -> bool {
        self.lower.is_some_and(|lower| max < lower) || self.upper.is_some_and(|upper| min > upper)
    }
}

/// What of a footer a plan may trust: all of stepstore's entries, or only
/// the row groups' statistics (the read that goes on after block
/// aggregates disagreed with the data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FooterTrust {
    /// Block aggregates, then key summaries, then statistics.
    Summaries,
    /// Row-group statistics only.
    StatisticsOnly,
}

/// Where one key's rows within some steps lie in a file.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum KeyRows {
    /// The block aggregates list them: the blocks meeting the steps, each
    /// with its first file row, in row order.
    Blocks(Vec<(u64, BlockAggregate)>),
    /// The key summaries give the key's rows (the file is sorted by key)
    /// and their smallest and greatest step; the rows' steps are not
    /// known to be in range.
    Rows {
        /// The key's rows.
        rows: Range<u64>,
        /// Their `(min, max)` step.
        steps: (i64, i64),
    },
    /// Only the row groups' statistics say anything: the rows of the row
    /// groups that may hold the key, whose keys must be checked.
    RowGroups {
        /// The rows of those row groups.
        rows: Vec<Range<u64>>,
        /// The `(min, max)` step of those row groups (of every key in
        /// them), when every one has step statistics.
        steps: Option<(i64, i64)>,
    },
}

impl KeyRows {
    /// Where `key`'s rows within `bounds` lie in the file of `footer`;
    /// `None` when the footer rules out every one.
    pub(crate) fn plan(
        footer: &FileFooter,
        key: &str,
        bounds: StepBounds,
        trust: FooterTrust,
    ) -> Option<KeyRows> {
        let metadata = footer.metadata.metadata();
        if trust == FooterTrust::Summaries {
            if let Some(aggregates) = &footer.aggregates {
                let entry = aggregates.key(key)?;
                let blocks: Vec<(u64, BlockAggregate)> = entry
                    .block_starts()
                    .zip(entry.blocks.iter().copied())
                    .filter(|(_, block)| !bounds.excludes_range(block.first.step, block.last.step))
                    .collect();
                return (!blocks.is_empty()).then_some(KeyRows::Blocks(blocks));
            }
            if let Some(summaries) = SummaryRows::of(metadata) {
                let (rows, steps) = summaries.key(key)?;
                return (!bounds.excludes_range(steps.0, steps.1))
                    .then_some(KeyRows::Rows { rows, steps });
            }
        }
        let (rows, steps) = row_groups_for_key(metadata, key, bounds);
        (!rows.is_empty()).then_some(KeyRows::RowGroups { rows, steps })
    }

    /// The smallest and greatest step the rows may hold, when the footer
    /// says.
    pub(crate) fn steps(&self) -> Option<(i64, i64)> {
        match self {
            KeyRows::Blocks(blocks) => Some((
                blocks.first()?.1.first.step,
                blocks.iter().map(|(_, block)| block.last.step).max()?,
            )),
            KeyRows::Rows { steps, .. } => Some(*steps),
            KeyRows::RowGroups { steps, .. } => *steps,
        }
    }

    /// The file rows to read, sorted and disjoint.
    pub(crate) fn ranges(&self) -> Vec<Range<u64>> {
        match self {
            KeyRows::Blocks(blocks) => {
                let mut ranges = Vec::with_capacity(blocks.len());
                for (first_row, block) in blocks {
                    push_range(&mut ranges, *first_row..first_row + u64::from(block.rows));
                }
                ranges
            }
            KeyRows::Rows { rows, .. } => vec![rows.clone()],
            KeyRows::RowGroups { rows, .. } => rows.clone(),
        }
    }
}

/// Each key's rows and step range from the key summaries of a file
/// without block aggregates, when the footer vouches for them: the file
/// is sorted by key (every row group says so), the keys are in order, and
/// their counts add up to the file's rows.
pub(crate) struct SummaryRows {
    keys: Vec<(String, Range<u64>, (i64, i64))>,
}

impl SummaryRows {
    /// The key rows of the file of `metadata`; `None` when its footer does
    /// not vouch for them.
    pub(crate) fn of(metadata: &ParquetMetaData) -> Option<SummaryRows> {
        let summaries =
            FileMetadata::from_key_values(metadata.file_metadata().key_value_metadata()).ok()?;
        let total_rows = u64::try_from(metadata.file_metadata().num_rows()).ok()?;
        let sorted_by_key = metadata.row_groups().iter().all(|group| {
            group
                .sorting_columns()
                .and_then(|columns| columns.first())
                .is_some_and(|first| first.column_idx == KEY_LEAF as i32 && !first.descending)
        });
        let in_order = summaries
            .keys
            .windows(2)
            .all(|pair| pair[0].0.as_bytes() < pair[1].0.as_bytes());
        let counted: u64 = summaries
            .keys
            .iter()
            .map(|(_, summary)| summary.count)
            .sum();
        if !sorted_by_key || !in_order || counted != total_rows {
            return None;
        }
        let mut start = 0u64;
        let keys = summaries
            .keys
            .into_iter()
            .map(|(key, summary)| {
                let rows = start..start + summary.count;
                start = rows.end;
                (key, rows, (summary.min_step, summary.max_step))
            })
            .collect();
        Some(SummaryRows { keys })
    }

    /// Every key with its rows and `(min, max)` step, in file order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (&str, Range<u64>, (i64, i64))> + '_ {
        self.keys
            .iter()
            .map(|(key, rows, steps)| (key.as_str(), rows.clone(), *steps))
    }

    /// The rows and `(min, max)` step of `key`.
    fn key(&self, key: &str) -> Option<(Range<u64>, (i64, i64))> {
        let index = self
            .keys
            .binary_search_by(|(name, _, _)| name.as_str().cmp(key))
            .ok()?;
        let (_, rows, steps) = &self.keys[index];
        Some((rows.clone(), *steps))
    }
}

/// The file rows of the row groups whose key and step statistics do not
/// rule out `key` within `bounds`, merged where they touch, and their
/// `(min, max)` step when each has step statistics.
fn row_groups_for_key(
    metadata: &ParquetMetaData,
    key: &str,
    bounds: StepBounds,
) -> (Vec<Range<u64>>, Option<(i64, i64)>) {
    let wanted = key.as_bytes();
    let mut ranges = Vec::new();
    let mut all_steps: Option<Option<(i64, i64)>> = None;
    let mut group_start = 0u64;
    for group in metadata.row_groups() {
        let rows = group.num_rows().max(0) as u64;
        let range = group_start..group_start + rows;
        group_start = range.end;
        let may_hold_key = group
            .column(KEY_LEAF)
            .statistics()
            .is_none_or(|statistics| {
                statistics.min_bytes_opt().is_none_or(|min| min <= wanted)
                    && statistics.max_bytes_opt().is_none_or(|max| wanted <= max)
            });
        let steps = match group.column(STEP_LEAF).statistics() {
            Some(Statistics::Int64(steps)) => steps.min_opt().zip(steps.max_opt()),
            _ => None,
        };
        let may_hold_steps = steps.is_none_or(|(&min, &max)| !bounds.excludes_range(min, max));
        if may_hold_key && may_hold_steps && rows > 0 {
            push_range(&mut ranges, range);
            let steps = steps.map(|(&min, &max)| (min, max));
            all_steps = Some(match all_steps {
                None => steps,
                Some(known) => known.zip(steps).map(|(a, b)| (a.0.min(b.0), a.1.max(b.1))),
            });
        }
    }
    (ranges, all_steps.flatten())
}

/// Appends `range` to sorted, disjoint `ranges`, merging it with the last
/// one when they touch.
pub(crate) fn push_range(ranges: &mut Vec<Range<u64>>, range: Range<u64>) {
    match ranges.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => ranges.push(range),
    }
}

/// The row groups holding some of a set of file rows, and the selection
/// of exactly those rows within them.
#[derive(Debug)]
pub(crate) struct RowGroupSelection {
    /// Row groups holding selected rows, in order.
    pub row_groups: Vec<usize>,
    /// Per selected row group, the selected rows relative to its start.
    pub rows_in_group: Vec<Vec<Range<u64>>>,
    /// The selection over the selected row groups' rows; `None` when it
    /// is all of them.
    pub selection: Option<RowSelection>,
    /// Rows selected.
    pub selected_rows: u64,
}

impl RowGroupSelection {
    /// The row groups of `metadata` holding any of the sorted, disjoint
    /// file rows `ranges`.
    pub(crate) fn of(metadata: &ParquetMetaData, ranges: &[Range<u64>]) -> RowGroupSelection {
        let mut row_groups = Vec::new();
        let mut rows_in_group = Vec::new();
        let mut selected: Vec<Range<usize>> = Vec::new();
        let mut selected_rows = 0u64;
        let mut group_start = 0u64;
        let mut base = 0usize;
        let mut next = 0usize;
        for (index, group) in metadata.row_groups().iter().enumerate() {
            let rows = group.num_rows().max(0) as u64;
            let group_end = group_start + rows;
            while next < ranges.len() && ranges[next].end <= group_start {
                next += 1;
            }
            let mut inside = Vec::new();
            let mut cursor = next;
            while cursor < ranges.len() && ranges[cursor].start < group_end {
                let start = ranges[cursor].start.max(group_start) - group_start;
                let end = ranges[cursor].end.min(group_end) - group_start;
                if start < end {
                    selected.push(base + start as usize..base + end as usize);
                    selected_rows += end - start;
                    inside.push(start..end);
                }
                cursor += 1;
            }
            if !inside.is_empty() {
                row_groups.push(index);
                rows_in_group.push(inside);
                base += rows as usize;
            }
            group_start = group_end;
        }
        let whole = selected.len() == 1 && selected[0].start == 0 && selected[0].end == base;
        let selection =
            (!whole).then(|| RowSelection::from_consecutive_ranges(selected.into_iter(), base));
        RowGroupSelection {
            row_groups,
            rows_in_group,
            selection,
            selected_rows,
        }
    }
}

/// The byte spans of column `leaf` of row group `group` that hold the
/// rows `ranges` (relative to the row group, sorted and disjoint): one span
/// per run of consecutive pages holding selected rows, and the dictionary
/// page; the whole chunk without an offset index.
pub(crate) fn page_spans(
    metadata: &ParquetMetaData,
    group: usize,
    leaf: usize,
    ranges: &[Range<u64>],
) -> Vec<Range<u64>> {
    let column = metadata.row_group(group).column(leaf);
    let (start, length) = column.byte_range();
    let chunk = start..start + length;
    let pages = metadata
        .offset_index()
        .and_then(|index| index.get(group))
        .and_then(|columns| columns.get(leaf))
        .map(|index| index.page_locations());
    let Some(pages) = pages.filter(|pages| !pages.is_empty()) else {
        return vec![chunk];
    };
    let to_u64 = |value: i64| u64::try_from(value).unwrap_or(0);
    let page_rows = |page: usize| {
        let start = to_u64(pages[page].first_row_index);
        let end = pages
            .get(page + 1)
            .map_or(u64::MAX, |next| to_u64(next.first_row_index));
        start..end
    };
    let page_bytes = |page: usize| {
        let start = to_u64(pages[page].offset);
        start..start + u64::try_from(pages[page].compressed_page_size).unwrap_or(0)
    };
    let mut spans: Vec<Range<u64>> = Vec::new();
    let first_data = to_u64(pages[0].offset);
    if first_data > chunk.start {
        // The dictionary page.
        spans.push(chunk.start..first_data);
    }
    let mut last_page: Option<usize> = None;
    let mut page = 0usize;
    for range in ranges.iter().filter(|range| range.end > range.start) {
        while page < pages.len() && page_rows(page).end <= range.start {
            page += 1;
        }
        let mut cursor = page;
        while cursor < pages.len() && page_rows(cursor).start < range.end {
            if last_page.is_none_or(|last| cursor > last) {
                let bytes = page_bytes(cursor);
                match spans.last_mut() {
                    Some(span) if last_page == Some(cursor.wrapping_sub(1)) => span.end = bytes.end,
                    _ => spans.push(bytes),
                }
                last_page = Some(cursor);
            }
            cursor += 1;
        }
        page = cursor.saturating_sub(1);
    }
    for span in &mut spans {
        span.end = span.end.min(chunk.end).max(span.start);
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{PersistedFile, written_file};

    fn written(points: &[(&str, i64, i64, f64)]) -> (tempfile::TempDir, PersistedFile) {
        let dir = tempfile::tempdir().unwrap();
        let file = written_file(&dir.path().join("00000001.parquet"), points);
        (dir, file)
    }

    #[test]
    fn a_key_is_planned_from_aggregates_summaries_or_statistics_alike() {
        let mut points: Vec<(&str, i64, i64, f64)> =
            (0..5_000).map(|step| ("loss", step, step, 1.0)).collect();
        points.extend((0..100).map(|step| ("acc", step, step, 1.0)));
        let (_dir, file) = written(&points);
        let footer = file.cached_footer().unwrap();
        let all = StepBounds::default();
        let Some(KeyRows::Blocks(blocks)) =
            KeyRows::plan(&footer, "loss", all, FooterTrust::Summaries)
        else {
            panic!("aggregates plan blocks");
        };
        let plan = KeyRows::Blocks(blocks);
        assert_eq!(plan.ranges(), vec![100..5_100]);
        let late = StepBounds {
            lower: Some(4_990),
            upper: None,
        };
        let Some(KeyRows::Blocks(late_blocks)) =
            KeyRows::plan(&footer, "loss", late, FooterTrust::Summaries)
        else {
            panic!("aggregates plan blocks");
        };
        assert_eq!(late_blocks.len(), 1, "only the last block holds step 4990");
        assert_eq!(
            KeyRows::plan(&footer, "missing", all, FooterTrust::Summaries),
            None
        );

        let without_aggregates = FileFooter {
            aggregates: None,
            ..footer.clone()
        };
        assert_eq!(
            KeyRows::plan(&without_aggregates, "acc", all, FooterTrust::Summaries),
            Some(KeyRows::Rows {
                rows: 0..100,
                steps: (0, 99)
            })
        );
        let beyond = StepBounds {
            lower: Some(100),
            upper: None,
        };
        assert_eq!(
            KeyRows::plan(&without_aggregates, "acc", beyond, FooterTrust::Summaries),
            None,
            "the summary's steps rule the key out"
        );
        assert_eq!(
            KeyRows::plan(&footer, "acc", all, FooterTrust::StatisticsOnly),
            Some(KeyRows::RowGroups {
                rows: std::iter::once(0..5_100).collect(),
                steps: Some((0, 4_999))
            })
        );
        assert_eq!(
            KeyRows::plan(&footer, "zzz", all, FooterTrust::StatisticsOnly),
            None,
            "the key statistics rule the key out"
        );
    }

    #[test]
    fn a_selection_covers_exactly_the_rows_asked_for() {
        let points: Vec<(&str, i64, i64, f64)> =
            (0..600_000).map(|step| ("loss", step, step, 1.0)).collect();
        let (_dir, file) = written(&points);
        let footer = file.footer().unwrap();
        let metadata = footer.metadata();
        assert!(metadata.num_row_groups() >= 3);
        let group_rows = metadata.row_group(0).num_rows() as u64;
        let selection = RowGroupSelection::of(
            metadata,
            &[
                10..20,
                group_rows - 5..group_rows + 5,
                2 * group_rows + 99..2 * group_rows + 100,
            ],
        );
        assert_eq!(selection.row_groups, vec![0, 1, 2]);
        assert_eq!(
            selection.rows_in_group,
            vec![
                vec![10..20, group_rows - 5..group_rows],
                vec![0..5],
                vec![99..100]
            ]
        );
        assert_eq!(selection.selected_rows, 21);
        let whole = RowGroupSelection::of(metadata, std::slice::from_ref(&(0..group_rows)));
        assert_eq!(whole.row_groups, vec![0]);
        assert!(whole.selection.is_none());
        let spans = page_spans(metadata, 0, STEP_LEAF, std::slice::from_ref(&(10..20)));
        assert_eq!(spans.len(), 1, "one page, no dictionary: {spans:?}");
        let (chunk_start, chunk_length) = metadata.row_group(0).column(STEP_LEAF).byte_range();
        assert!(spans[0].start >= chunk_start && spans[0].end < chunk_start + chunk_length);
        // Rows of pages 0 and 1, then of page 5: two spans.
        let pages = page_spans(metadata, 0, STEP_LEAF, &[4_000..4_100, 20_500..20_501]);
        assert_eq!(pages.len(), 2, "{pages:?}");
        assert_eq!(pages[0].start, spans[0].start);
        assert!(pages[0].end < pages[1].start);
        let everything = page_spans(
            metadata,
            0,
            STEP_LEAF,
            std::slice::from_ref(&(0..group_rows)),
        );
        assert_eq!(everything, vec![chunk_start..chunk_start + chunk_length]);
    }
}
