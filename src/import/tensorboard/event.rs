//! The parts of TensorBoard's `Event` protobuf that carry scalars, decoded
//! with `prost` (field numbers from TensorBoard's `event.proto`,
//! `summary.proto`, `tensor.proto` and `tensor_shape.proto`). Other fields
//! (graphs, session logs, images, histograms, ...) are skipped.

use prost::Message;

/// `tensorboard.Event`: `wall_time = 1`, `step = 2`, and of the `what`
/// oneof `file_version = 3` and `summary = 5`.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// Seconds since the epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// Global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// `brain.Event:2` in a file's first event.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// Summary values.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorboard.Summary`: `repeated Value value = 1`.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorboard.Summary.Value`: `tag = 1`, `simple_value = 2` (float),
/// `tensor = 8`, `metadata = 9`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryValue {
    /// The tag.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A TF1-style scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// A TF2-style value.
    #[prost(message, optional, tag = "8")]
    pub tensor: Option<TensorProto>,
    /// Which plugin the value belongs to.
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
}

/// `tensorboard.SummaryMetadata`: `plugin_data = 1`.
#[derive(Clone, PartialEq, Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorboard.SummaryMetadata.PluginData`: `plugin_name = 1`.
#[derive(Clone, PartialEq, Message)]
pub struct PluginData {
    /// `scalars`, `histograms`, `images`, `text`, ...
    #[prost(string, tag = "1")]
    pub plugin_name: String,
}

/// `tensorboard.TensorProto` (the fields a scalar can use).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// `tensorboard.DataType`.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// The shape; a scalar has no dimensions.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// Raw little-endian content.
    #[prost(bytes = "vec", tag = "4")]
    pub tensor_content: Vec<u8>,
    /// `DT_HALF`, `DT_BFLOAT16` bits.
    #[prost(int32, repeated, tag = "13")]
    pub half_val: Vec<i32>,
    /// `DT_FLOAT`.
    #[prost(float, repeated, tag = "5")]
    pub float_val: Vec<f32>,
    /// `DT_DOUBLE`.
    #[prost(double, repeated, tag = "6")]
    pub double_val: Vec<f64>,
    /// `DT_INT32`, `DT_INT16`, `DT_INT8`, `DT_UINT8`, `DT_UINT16`.
    #[prost(int32, repeated, tag = "7")]
    pub int_val: Vec<i32>,
    /// `DT_INT64`.
    #[prost(int64, repeated, tag = "10")]
    pub int64_val: Vec<i64>,
    /// `DT_BOOL`.
    #[prost(bool, repeated, tag = "11")]
    pub bool_val: Vec<bool>,
    /// `DT_UINT32`.
    #[prost(uint32, repeated, tag = "16")]
    pub uint32_val: Vec<u32>,
    /// `DT_UINT64`.
    #[prost(uint64, repeated, tag = "17")]
    pub uint64_val: Vec<u64>,
}

/// `tensorboard.TensorShapeProto`: `dim = 2`, `unknown_rank = 3`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
    /// Whether the rank is unknown.
    #[prost(bool, tag = "3")]
    pub unknown_rank: bool,
}

/// `tensorboard.TensorShapeProto.Dim`: `size = 1`.
#[derive(Clone, PartialEq, Message)]
pub struct Dim {
    /// Size of the dimension.
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// `tensorboard.DataType` values a scalar can have.
mod dtype {
    pub const FLOAT: i32 = 1;
    pub const DOUBLE: i32 = 2;
    pub const INT32: i32 = 3;
    pub const UINT8: i32 = 4;
    pub const INT16: i32 = 5;
    pub const INT8: i32 = 6;
    pub const INT64: i32 = 9;
    pub const BOOL: i32 = 10;
    pub const BFLOAT16: i32 = 14;
    pub const UINT16: i32 = 17;
    pub const HALF: i32 = 19;
    pub const UINT32: i32 = 22;
    pub const UINT64: i32 = 23;
}

/// Decodes one event record.
pub fn decode_event(record: &[u8]) -> Result<Event, prost::DecodeError> {
    Event::decode(record)
}

impl SummaryValue {
    /// The scalar this value holds: its `simple_value`, or a rank-0 numeric
    /// tensor. `None` for anything else (images, histograms, text, ...).
    pub fn scalar(&self) -> Option<f64> {
        if let Some(value) = self.simple_value {
            return Some(f64::from(value));
        }
        let tensor = self.tensor.as_ref()?;
        let shape = tensor.tensor_shape.as_ref();
        if shape.is_some_and(|shape| shape.unknown_rank || !shape.dim.is_empty()) {
            return None;
        }
        tensor_scalar(tensor)
    }
}

fn first_bytes<const N: usize>(content: &[u8]) -> Option<[u8; N]> {
    content.get(..N)?.try_into().ok()
}

/// The single element of a scalar tensor, from its typed field or its raw
/// content.
fn tensor_scalar(tensor: &TensorProto) -> Option<f64> {
    let raw = &tensor.tensor_content;
    match tensor.dtype {
        dtype::FLOAT => tensor
            .float_val
            .first()
            .map(|&value| f64::from(value))
            .or_else(|| first_bytes(raw).map(|bytes| f64::from(f32::from_le_bytes(bytes)))),
        dtype::DOUBLE => tensor
            .double_val
            .first()
            .copied()
            .or_else(|| first_bytes(raw).map(f64::from_le_bytes)),
        dtype::INT32 | dtype::INT16 | dtype::INT8 | dtype::UINT8 | dtype::UINT16 => tensor
            .int_val
            .first()
            .map(|&value| f64::from(value))
            .or_else(|| match tensor.dtype {
                dtype::INT32 => first_bytes(raw).map(|b| f64::from(i32::from_le_bytes(b))),
                dtype::INT16 => first_bytes(raw).map(|b| f64::from(i16::from_le_bytes(b))),
                dtype::UINT16 => first_bytes(raw).map(|b| f64::from(u16::from_le_bytes(b))),
                dtype::INT8 => raw.first().map(|&b| f64::from(b as i8)),
                _ => raw.first().map(|&b| f64::from(b)),
            }),
        dtype::INT64 => tensor
            .int64_val
            .first()
            .map(|&value| value as f64)
            .or_else(|| first_bytes(raw).map(|b| i64::from_le_bytes(b) as f64)),
        dtype::UINT32 => tensor
            .uint32_val
            .first()
            .map(|&value| f64::from(value))
            .or_else(|| first_bytes(raw).map(|b| f64::from(u32::from_le_bytes(b)))),
        dtype::UINT64 => tensor
            .uint64_val
            .first()
            .map(|&value| value as f64)
            .or_else(|| first_bytes(raw).map(|b| u64::from_le_bytes(b) as f64)),
        dtype::BOOL => tensor
            .bool_val
            .first()
            .map(|&value| f64::from(u8::from(value)))
            .or_else(|| raw.first().map(|&b| f64::from(u8::from(b != 0)))),
        dtype::HALF => tensor
            .half_val
            .first()
            .map(|&bits| half_to_f64(bits as u16))
            .or_else(|| first_bytes(raw).map(|b| half_to_f64(u16::from_le_bytes(b)))),
        dtype::BFLOAT16 => tensor
            .half_val
            .first()
            .map(|&bits| bfloat16_to_f64(bits as u16))
            .or_else(|| first_bytes(raw).map(|b| bfloat16_to_f64(u16::from_le_bytes(b)))),
        _ => None,
    }
}

/// IEEE 754 half precision to `f64`.
fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// bfloat16 (the upper half of an `f32`) to `f64`.
fn bfloat16_to_f64(bits: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(bits) << 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar_tensor(dtype: i32) -> TensorProto {
        TensorProto {
            dtype,
            tensor_shape: Some(TensorShapeProto::default()),
            ..TensorProto::default()
        }
    }

    #[test]
    fn simple_values_and_rank_zero_tensors_are_scalars() {
        let simple = SummaryValue {
            tag: "loss".into(),
            simple_value: Some(0.5),
            ..SummaryValue::default()
        };
        assert_eq!(simple.scalar(), Some(0.5));
        let mut float = scalar_tensor(dtype::FLOAT);
        float.float_val = vec![1.25];
        let mut double = scalar_tensor(dtype::DOUBLE);
        double.tensor_content = 2.5f64.to_le_bytes().to_vec();
        let mut int64 = scalar_tensor(dtype::INT64);
        int64.int64_val = vec![-7];
        let mut half = scalar_tensor(dtype::HALF);
        half.half_val = vec![0x3c00];
        let mut bfloat = scalar_tensor(dtype::BFLOAT16);
        bfloat.tensor_content = vec![0xc0, 0x3f];
        for (tensor, expected) in [
            (float, 1.25),
            (double, 2.5),
            (int64, -7.0),
            (half, 1.0),
            (bfloat, 1.5),
        ] {
            let value = SummaryValue {
                tag: "t".into(),
                tensor: Some(tensor),
                ..SummaryValue::default()
            };
            assert_eq!(value.scalar(), Some(expected));
        }
    }

    #[test]
    fn non_scalars_are_skipped() {
        let mut vector = scalar_tensor(dtype::FLOAT);
        vector.tensor_shape = Some(TensorShapeProto {
            dim: vec![Dim { size: 3 }],
            unknown_rank: false,
        });
        vector.float_val = vec![1.0, 2.0, 3.0];
        let text = scalar_tensor(7);
        for tensor in [vector, text] {
            let value = SummaryValue {
                tag: "t".into(),
                tensor: Some(tensor),
                ..SummaryValue::default()
            };
            assert_eq!(value.scalar(), None);
        }
        assert_eq!(SummaryValue::default().scalar(), None);
    }

    #[test]
    fn events_decode_from_their_wire_form() {
        let event = Event {
            wall_time: 1_700_000_000.25,
            step: 42,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: "train/loss".into(),
                    simple_value: Some(f32::NAN),
                    ..SummaryValue::default()
                }],
            }),
        };
        let decoded = decode_event(&event.encode_to_vec()).unwrap();
        assert_eq!(decoded.step, 42);
        let value = &decoded.summary.unwrap().value[0];
        assert_eq!(value.tag, "train/loss");
        assert!(value.scalar().unwrap().is_nan());
        assert!(decode_event(&[0xff, 0xff]).is_err());
        assert_eq!(half_to_f64(0x7c00), f64::INFINITY);
        assert!(half_to_f64(0x7e00).is_nan());
    }
}
