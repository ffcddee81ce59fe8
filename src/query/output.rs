//! Query results as JSON rows, CSV, an Arrow IPC stream or a text table.
//!
//! JSON is `{"columns": [{"name", "type"}], "rows": [{column: value}],
//! "row_count": n}`; non-finite floats are the strings `"NaN"`,
//! `"Infinity"` and `"-Infinity"` (as everywhere in stepstore's API),
//! timestamps are RFC 3339 strings, NULL is `null`. CSV has a header row,
//! RFC 4180 quoting and empty fields for NULL.

use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema,
    SchemaRef, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Number, Value};

use super::{QueryError, QueryResult};

/// Media type of an Arrow IPC stream.
pub const ARROW_STREAM_MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";
/// Media type of CSV.
pub const CSV_MEDIA_TYPE: &str = "text/csv";
/// Media type of JSON.
pub const JSON_MEDIA_TYPE: &str = "application/json";

/// How a result is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// JSON rows.
    Json,
    /// CSV with a header row.
    Csv,
    /// An Arrow IPC stream.
    Arrow,
    /// A text table for people.
    Table,
}

impl FromStr for OutputFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "json" => Ok(OutputFormat::Json),
            "csv" => Ok(OutputFormat::Csv),
            "arrow" => Ok(OutputFormat::Arrow),
            "table" => Ok(OutputFormat::Table),
            other => Err(format!(
                "unknown format '{other}': expected json, csv, arrow or table"
            )),
        }
    }
}

impl OutputFormat {
    /// The format an HTTP `Accept` header asks for (JSON unless it names
    /// Arrow or CSV).
    pub fn from_accept(accept: &str) -> Self {
        if accept.contains(ARROW_STREAM_MEDIA_TYPE) {
            OutputFormat::Arrow
        } else if accept.contains(CSV_MEDIA_TYPE) {
            OutputFormat::Csv
        } else {
            OutputFormat::Json
        }
    }

    /// Its media type.
    pub fn media_type(self) -> &'static str {
        match self {
            OutputFormat::Json => JSON_MEDIA_TYPE,
            OutputFormat::Csv => "text/csv; charset=utf-8",
            OutputFormat::Arrow => ARROW_STREAM_MEDIA_TYPE,
            OutputFormat::Table => "text/plain; charset=utf-8",
        }
    }

    /// Writes `result` in this format.
    pub fn encode(self, result: &QueryResult) -> Result<Vec<u8>, QueryError> {
        match self {
            OutputFormat::Json => to_json(result),
            OutputFormat::Csv => to_csv(result),
            OutputFormat::Arrow => to_arrow_stream(result),
            OutputFormat::Table => to_table(result).map(String::into_bytes),
        }
    }
}

/// Encodes a result batch by batch as the query produces it, so that only
/// the encoded bytes are kept (never every batch and its encoding at
/// once), and refuses a result whose encoding passes `max_bytes`.
pub struct ResultEncoder {
    format: OutputFormat,
    schema: SchemaRef,
    max_bytes: usize,
    out: Vec<u8>,
    rows: usize,
    /// Arrow: the stream writer (owning `out` while it writes).
    arrow: Option<StreamWriter<Vec<u8>>>,
    /// Table: the batches, laid out at the end (column widths need every
    /// row); their memory counts against `max_bytes`.
    table: Vec<RecordBatch>,
    table_bytes: usize,
}

impl ResultEncoder {
    /// An encoder for a result with `schema`, writing its header.
    pub fn new(
        format: OutputFormat,
        schema: SchemaRef,
        max_bytes: usize,
    ) -> Result<Self, QueryError> {
        let mut encoder = ResultEncoder {
            format,
            schema,
            max_bytes,
            out: Vec::new(),
            rows: 0,
            arrow: None,
            table: Vec::new(),
            table_bytes: 0,
        };
        match format {
            OutputFormat::Json => {
                let columns: Vec<Value> = encoder
                    .schema
                    .fields()
                    .iter()
                    .map(|field| {
                        serde_json::json!({"name": field.name(), "type": field.data_type().to_string()})
                    })
                    .collect();
                encoder.out.extend_from_slice(b"{\"columns\":");
                serde_json::to_writer(&mut encoder.out, &columns).map_err(output_error)?;
                encoder.out.extend_from_slice(b",\"rows\":[");
            }
            OutputFormat::Csv => {
                let header: Vec<String> = encoder
                    .schema
                    .fields()
                    .iter()
                    .map(|field| csv_field(field.name()))
                    .collect();
                encoder.out.extend_from_slice(header.join(",").as_bytes());
                encoder.out.extend_from_slice(b"\r\n");
            }
            OutputFormat::Arrow => {
                encoder.arrow = Some(
                    StreamWriter::try_new(Vec::new(), encoder.schema.as_ref())
                        .map_err(output_error)?,
                );
            }
            OutputFormat::Table => {}
        }
        Ok(encoder)
    }

    /// Encodes one batch.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.format {
            OutputFormat::Json => {
                let values: Vec<Vec<Value>> = batch
                    .columns()
                    .iter()
                    .map(json_values)
                    .collect::<Result<_, _>>()
                    .map_err(output_error)?;
                for row in 0..batch.num_rows() {
                    let mut object = Map::with_capacity(values.len());
                    for (field, column) in self.schema.fields().iter().zip(&values) {
                        object.insert(field.name().clone(), column[row].clone());
                    }
                    if self.rows + row > 0 {
                        self.out.push(b',');
                    }
                    serde_json::to_writer(&mut self.out, &Value::Object(object))
                        .map_err(output_error)?;
                    // Checked every row: one batch can encode to far more
                    // than its Arrow size.
                    self.check(self.out.len())?;
                }
            }
            OutputFormat::Csv => {
                write_csv_rows(&mut self.out, batch, self.max_bytes)?;
            }
            OutputFormat::Arrow => {
                if let Some(writer) = self.arrow.as_mut() {
                    writer.write(batch).map_err(output_error)?;
                    let written = writer.get_ref().len();
                    self.check(written)?;
                }
            }
            OutputFormat::Table => {
                self.table_bytes += batch.get_array_memory_size();
                self.check(self.table_bytes)?;
                self.table.push(batch.clone());
            }
        }
        self.rows += batch.num_rows();
        self.check(self.out.len())
    }

    fn check(&self, bytes: usize) -> Result<(), QueryError> {
        if bytes > self.max_bytes {
            return Err(QueryError::ResultTooLarge {
                limit_mb: self.max_bytes >> 20,
            });
        }
        Ok(())
    }

    /// Rows encoded so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes held so far (the encoding, or a table's batches).
    pub fn bytes(&self) -> usize {
        match (&self.arrow, self.format) {
            (Some(writer), _) => writer.get_ref().capacity(),
            (None, OutputFormat::Table) => self.table_bytes,
            (None, _) => self.out.capacity(),
        }
    }

    /// Finishes the document and returns its bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, QueryError> {
        match self.format {
            OutputFormat::Json => {
                self.out.extend_from_slice(b"],\"row_count\":");
                self.out.extend_from_slice(self.rows.to_string().as_bytes());
                self.out.push(b'}');
                Ok(self.out)
            }
            OutputFormat::Csv => Ok(self.out),
            OutputFormat::Arrow => match self.arrow.take() {
                Some(writer) => writer.into_inner().map_err(output_error),
                None => Ok(self.out),
            },
            OutputFormat::Table => to_table(&QueryResult {
                schema: self.schema,
                batches: self.table,
            })
            .map(String::into_bytes),
        }
    }
}

fn output_error(error: impl std::fmt::Display) -> QueryError {
    QueryError::Output(error.to_string())
}

/// The result as a JSON document (see the module docs).
pub fn to_json(result: &QueryResult) -> Result<Vec<u8>, QueryError> {
    let mut encoder =
        ResultEncoder::new(OutputFormat::Json, Arc::clone(&result.schema), usize::MAX)?;
    for batch in &result.batches {
        encoder.push(batch)?;
    }
    encoder.finish()
}

/// Finite floats as numbers, the others as MLflow-style strings.
fn float_value(value: f64) -> Value {
    if value.is_nan() {
        Value::String("NaN".to_string())
    } else if value == f64::INFINITY {
        Value::String("Infinity".to_string())
    } else if value == f64::NEG_INFINITY {
        Value::String("-Infinity".to_string())
    } else {
        Number::from_f64(value).map_or(Value::Null, Value::Number)
    }
}

macro_rules! primitive_values {
    ($array:expr, $type:ty, $convert:expr) => {{
        let array = $array.as_primitive::<$type>();
        (0..array.len())
            .map(|row| {
                if array.is_null(row) {
                    Value::Null
                } else {
                    $convert(array.value(row))
                }
            })
            .collect()
    }};
}

/// One column as JSON values.
fn json_values(column: &ArrayRef) -> Result<Vec<Value>, ArrowError> {
    if let DataType::Dictionary(_, value_type) = column.data_type() {
        return json_values(&cast(column, value_type)?);
    }
    let values = match column.data_type() {
        DataType::Null => vec![Value::Null; column.len()],
        DataType::Boolean => {
            let array = column.as_boolean();
            (0..array.len())
                .map(|row| {
                    if array.is_null(row) {
                        Value::Null
                    } else {
                        Value::Bool(array.value(row))
                    }
                })
                .collect()
        }
        DataType::Int8 => primitive_values!(column, Int8Type, |v: i8| Value::from(v)),
        DataType::Int16 => primitive_values!(column, Int16Type, |v: i16| Value::from(v)),
        DataType::Int32 => primitive_values!(column, Int32Type, |v: i32| Value::from(v)),
        DataType::Int64 => primitive_values!(column, Int64Type, |v: i64| Value::from(v)),
        DataType::UInt8 => primitive_values!(column, UInt8Type, |v: u8| Value::from(v)),
        DataType::UInt16 => primitive_values!(column, UInt16Type, |v: u16| Value::from(v)),
        DataType::UInt32 => primitive_values!(column, UInt32Type, |v: u32| Value::from(v)),
        DataType::UInt64 => primitive_values!(column, UInt64Type, |v: u64| Value::from(v)),
        DataType::Float32 => {
            primitive_values!(column, Float32Type, |v: f32| float_value(f64::from(v)))
        }
        DataType::Float64 => primitive_values!(column, Float64Type, float_value),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings = cast(column, &DataType::Utf8)?;
            let array = strings.as_string::<i32>();
            (0..array.len())
                .map(|row| {
                    if array.is_null(row) {
                        Value::Null
                    } else {
                        Value::String(array.value(row).to_string())
                    }
                })
                .collect()
        }
        _ => {
            let options = FormatOptions::default();
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
            (0..column.len())
                .map(|row| {
                    if column.is_null(row) {
                        Value::Null
                    } else {
                        Value::String(formatter.value(row).to_string())
                    }
                })
                .collect()
        }
    };
    Ok(values)
}

/// The result as CSV with a header row.
pub fn to_csv(result: &QueryResult) -> Result<Vec<u8>, QueryError> {
    let mut encoder =
        ResultEncoder::new(OutputFormat::Csv, Arc::clone(&result.schema), usize::MAX)?;
    for batch in &result.batches {
        encoder.push(batch)?;
    }
    encoder.finish()
}

/// Appends `batch` as CSV rows, refusing output past `max_bytes`.
fn write_csv_rows(
    out: &mut Vec<u8>,
    batch: &RecordBatch,
    max_bytes: usize,
) -> Result<(), QueryError> {
    let options = FormatOptions::default().with_null("");
    let formatters: Vec<ArrayFormatter<'_>> = batch
        .columns()
        .iter()
        .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
        .collect::<Result<_, _>>()
        .map_err(output_error)?;
    for row in 0..batch.num_rows() {
        for (index, formatter) in formatters.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(csv_field(&formatter.value(row).to_string()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        if out.len() > max_bytes {
            return Err(QueryError::ResultTooLarge {
                limit_mb: max_bytes >> 20,
            });
        }
    }
    Ok(())
}

/// Quotes a CSV field when it holds a separator, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The result as an Arrow IPC stream.
pub fn to_arrow_stream(result: &QueryResult) -> Result<Vec<u8>, QueryError> {
    let mut writer =
        StreamWriter::try_new(Vec::new(), result.schema.as_ref()).map_err(output_error)?;
    for batch in &result.batches {
        writer.write(batch).map_err(output_error)?;
    }
    writer.into_inner().map_err(output_error)
}

/// Reads an Arrow IPC stream back into a result.
pub fn from_arrow_stream(bytes: &[u8]) -> Result<QueryResult, QueryError> {
    let reader = StreamReader::try_new(bytes, None).map_err(output_error)?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<RecordBatch>, ArrowError>>()
        .map_err(output_error)?;
    Ok(QueryResult { schema, batches })
}

/// The result as a text table (column names even when there are no rows).
pub fn to_table(result: &QueryResult) -> Result<String, QueryError> {
    let schema: Arc<Schema> = Arc::clone(&result.schema);
    let table = arrow::util::pretty::pretty_format_batches_with_schema(schema, &result.batches)
        .map_err(output_error)?;
    Ok(format!("{table}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Field;

    fn sample() -> QueryResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
            Field::new("x", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![Some("a,b"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(Float64Array::from(vec![Some(f64::NAN), Some(0.5)])),
            ],
        )
        .unwrap();
        QueryResult {
            schema,
            batches: vec![batch],
        }
    }

    #[test]
    fn every_format_refuses_a_result_past_its_limit() {
        let result = sample();
        for format in [
            OutputFormat::Json,
            OutputFormat::Csv,
            OutputFormat::Arrow,
            OutputFormat::Table,
        ] {
            let mut encoder = ResultEncoder::new(format, Arc::clone(&result.schema), 1024).unwrap();
            let mut refused = None;
            for _ in 0..1000 {
                if let Err(error) = encoder.push(&result.batches[0]) {
                    refused = Some(error);
                    break;
                }
            }
            let error = refused.unwrap_or_else(|| panic!("{format:?} was never refused"));
            assert!(
                matches!(error, QueryError::ResultTooLarge { .. }),
                "{format:?}: {error}"
            );
        }
        // Under the limit, the streamed JSON is the same document.
        let mut encoder =
            ResultEncoder::new(OutputFormat::Json, Arc::clone(&result.schema), 1 << 20).unwrap();
        encoder.push(&result.batches[0]).unwrap();
        encoder.push(&result.batches[0]).unwrap();
        assert_eq!(encoder.rows(), 4);
        let json: Value = serde_json::from_slice(&encoder.finish().unwrap()).unwrap();
        assert_eq!(json["row_count"], 4);
        assert_eq!(json["rows"].as_array().unwrap().len(), 4);
        assert_eq!(json["rows"][2]["name"], "a,b");
    }

    #[test]
    fn formats_agree_on_the_same_rows() {
        let result = sample();
        let json: Value = serde_json::from_slice(&to_json(&result).unwrap()).unwrap();
        assert_eq!(json["row_count"], 2);
        assert_eq!(json["rows"][0]["name"], "a,b");
        assert_eq!(json["rows"][0]["x"], "NaN");
        assert_eq!(json["rows"][1]["name"], Value::Null);
        assert_eq!(json["rows"][1]["x"], 0.5);
        assert_eq!(json["columns"][1]["type"], "Int64");

        let csv = String::from_utf8(to_csv(&result).unwrap()).unwrap();
        assert_eq!(csv, "name,n,x\r\n\"a,b\",1,NaN\r\n,2,0.5\r\n");

        let back = from_arrow_stream(&to_arrow_stream(&result).unwrap()).unwrap();
        assert_eq!(back.batches, result.batches);

        let table = to_table(&result).unwrap();
        assert!(table.contains("| name"), "{table}");
        assert_eq!(
            "table".parse::<OutputFormat>().unwrap(),
            OutputFormat::Table
        );
        assert_eq!(
            OutputFormat::from_accept("application/vnd.apache.arrow.stream"),
            OutputFormat::Arrow
        );
        assert_eq!(OutputFormat::from_accept("*/*"), OutputFormat::Json);
    }
}
