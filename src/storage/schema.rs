//! The Arrow schema of metric files and the Parquet writer settings that
//! make them small and quick to read one key from.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::aggregates::BLOCK_ROWS;

/// Name of the key column.
pub const KEY_COLUMN: &str = "key";
/// Name of the step column.
pub const STEP_COLUMN: &str = "step";
/// Name of the timestamp column.
pub const TIMESTAMP_COLUMN: &str = "timestamp";
/// Name of the value column.
pub const VALUE_COLUMN: &str = "value";
/// Time zone of the timestamp column.
pub const TIMEZONE: &str = "UTC";

/// The column of a metric file named `name`, as the constant naming it.
pub fn file_column(name: &str) -> Option<&'static str> {
    [KEY_COLUMN, STEP_COLUMN, TIMESTAMP_COLUMN, VALUE_COLUMN]
        .into_iter()
        .find(|column| *column == name)
}

/// Rows per Parquet row group (a multiple of [`BLOCK_ROWS`], the rows per
/// data page).
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// `key` (dictionary string), `step` (int64), `timestamp` (ms, UTC) and
/// `value` (float64). Run and experiment ids come from the directory names
/// (Hive partitioning).
pub fn metric_file_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(
                KEY_COLUMN,
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new(STEP_COLUMN, DataType::Int64, false),
            Field::new(
                TIMESTAMP_COLUMN,
                DataType::Timestamp(TimeUnit::Millisecond, Some(TIMEZONE.into())),
                false,
            ),
            Field::new(VALUE_COLUMN, DataType::Float64, false),
        ]))
    }))
}

/// Writer settings: dictionary-encoded key, delta-encoded step and
/// timestamp, byte-stream-split value, zstd for timestamp and value, data
/// pages of [`BLOCK_ROWS`] rows, page statistics and the sort order
/// recorded in the footer.
///
/// `key` (runs of one dictionary index) and `step` (deltas of mostly 1)
/// encode to almost nothing, so they are left uncompressed: zstd would not
/// make them smaller, and every compressed column chunk costs a reader a
/// zstd context each time it is opened (about 15% of a query that reads a
/// few rows from each of 1,000 files).
pub fn writer_properties() -> WriterProperties {
    let zstd = Compression::ZSTD(ZstdLevel::default());
    let delta_columns = [STEP_COLUMN, TIMESTAMP_COLUMN];
    let mut builder = WriterProperties::builder()
        .set_compression(zstd)
        .set_column_compression(ColumnPath::from(KEY_COLUMN), Compression::UNCOMPRESSED)
        .set_column_compression(ColumnPath::from(STEP_COLUMN), Compression::UNCOMPRESSED)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_row_count_limit(BLOCK_ROWS)
        .set_sorting_columns(Some(
            (0..3)
                .map(|column_idx| SortingColumn {
                    column_idx,
                    descending: false,
                    nulls_first: false,
                })
                .collect(),
        ))
        .set_column_dictionary_enabled(ColumnPath::from(KEY_COLUMN), true);
    for column in delta_columns {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    builder
        .set_column_dictionary_enabled(ColumnPath::from(VALUE_COLUMN), false)
        .set_column_encoding(ColumnPath::from(VALUE_COLUMN), Encoding::BYTE_STREAM_SPLIT)
        .build()
}
