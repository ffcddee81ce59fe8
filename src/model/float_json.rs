//! JSON for `f64` values that may be NaN or infinite.
//!
//! JSON has no NaN or infinity. Like protobuf's JSON mapping (which MLflow
//! uses), non-finite values are written as the strings `"NaN"`,
//! `"Infinity"` and `"-Infinity"`, and read back from those strings (and
//! from `"inf"`, `"-inf"`, `"+Infinity"`) as well as from plain numbers.

use serde::de::{self, Visitor};
use serde::{Deserializer, Serialize, Serializer};
use std::fmt;

/// A float that serialises NaN and infinities as strings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JsonF64(pub f64);

impl Serialize for JsonF64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, serializer)
    }
}

impl<'de> serde::Deserialize<'de> for JsonF64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(JsonF64)
    }
}

/// The text of a non-finite value, or `None` for a finite one.
pub fn non_finite_name(value: f64) -> Option<&'static str> {
    if value.is_nan() {
        Some("NaN")
    } else if value == f64::INFINITY {
        Some("Infinity")
    } else if value == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

/// Parses the names of non-finite values (and decimal numbers in a string).
pub fn parse_float_text(text: &str) -> Option<f64> {
    match text {
        "NaN" | "nan" => Some(f64::NAN),
        "Infinity" | "+Infinity" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        other => other.trim().parse::<f64>().ok(),
    }
}

/// `#[serde(serialize_with)]` helper.
pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    match non_finite_name(*value) {
        Some(name) => serializer.serialize_str(name),
        None => serializer.serialize_f64(*value),
    }
}

/// `#[serde(deserialize_with)]` helper.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    deserializer.deserialize_any(FloatVisitor)
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a number, or \"NaN\", \"Infinity\" or \"-Infinity\"")
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
        Ok(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
        Ok(value as f64)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<f64, E> {
        parse_float_text(text).ok_or_else(|| {
            E::custom(format!(
                "'{}' is not a number",
                crate::model::ids::truncate_for_message(text)
            ))
        })
    }
}

/// Serialises a slice of floats, non-finite ones as strings.
pub fn serialize_slice<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut sequence = serializer.serialize_seq(Some(values.len()))?;
    for value in values {
        sequence.serialize_element(&JsonF64(*value))?;
    }
    sequence.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_round_trip_as_strings() {
        let values = [1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0];
        let wrapped: Vec<JsonF64> = values.iter().copied().map(JsonF64).collect();
        let json = serde_json::to_string(&wrapped).unwrap();
        assert_eq!(json, r#"[1.5,"NaN","Infinity","-Infinity",-0.0]"#);
        let back: Vec<JsonF64> = serde_json::from_str(&json).unwrap();
        for (original, parsed) in values.iter().zip(back) {
            assert_eq!(original.to_bits(), parsed.0.to_bits());
        }
    }

    #[test]
    fn integers_and_numeric_strings_are_accepted() {
        let parsed: Vec<JsonF64> = serde_json::from_str(r#"[3, -2, "0.25", "inf"]"#).unwrap();
        assert_eq!(parsed[0].0, 3.0);
        assert_eq!(parsed[1].0, -2.0);
        assert_eq!(parsed[2].0, 0.25);
        assert_eq!(parsed[3].0, f64::INFINITY);
        assert!(serde_json::from_str::<JsonF64>(r#""abc""#).is_err());
        assert!(serde_json::from_str::<JsonF64>("true").is_err());
    }
}
