//! Identifiers: run ids (32 lower-case hex characters) and experiment ids
//! (decimal strings). Both are validated on parse, so a value of these types
//! is always safe to use in a file path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::validation::ValidationError;

/// A run identifier: 16 random bytes, written as 32 lower-case hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId([u8; 16]);

impl RunId {
    /// A new random run id (UUID v4 bytes).
    pub fn new_random() -> Self {
        RunId(*uuid::Uuid::new_v4().as_bytes())
    }

    /// Builds a run id from its raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        RunId(bytes)
    }

    /// The raw bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses exactly 32 lower-case hex characters; anything else is refused.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let invalid = || ValidationError::InvalidRunId(truncate_for_message(text));
        let raw = text.as_bytes();
        if raw.len() != 32 {
            return Err(invalid());
        }
        let mut bytes = [0u8; 16];
        for (index, pair) in raw.chunks_exact(2).enumerate() {
            let high = lower_hex_value(pair[0]).ok_or_else(invalid)?;
            let low = lower_hex_value(pair[1]).ok_or_else(invalid)?;
            bytes[index] = (high << 4) | low;
        }
        Ok(RunId(bytes))
    }

    /// A stable shard number in `0..shard_count` for this run.
    pub fn shard(&self, shard_count: usize) -> usize {
        let folded = u64::from_le_bytes([
            self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5], self.0[6], self.0[7],
        ]) ^ u64::from_le_bytes([
            self.0[8], self.0[9], self.0[10], self.0[11], self.0[12], self.0[13], self.0[14],
            self.0[15],
        ]);
        (folded % shard_count.max(1) as u64) as usize
    }
}

fn lower_hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Shortens client-supplied text before it is echoed in an error message.
pub(crate) fn truncate_for_message(text: &str) -> String {
    const LIMIT: usize = 100;
    if text.chars().count() <= LIMIT {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(LIMIT).collect();
        short.push_str("...");
        short
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "RunId({self})")
    }
}

impl FromStr for RunId {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RunId::parse(text)
    }
}

impl Serialize for RunId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            RunId::parse(&text).map_err(serde::de::Error::custom)
        } else {
            Ok(RunId(<[u8; 16]>::deserialize(deserializer)?))
        }
    }
}

/// An experiment identifier. Written as a decimal string; `"0"` is the
/// `Default` experiment that always exists.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExperimentId(u64);

impl ExperimentId {
    /// The id of the `Default` experiment.
    pub const DEFAULT: ExperimentId = ExperimentId(0);

    /// Builds an id from its number.
    pub fn new(value: u64) -> Self {
        ExperimentId(value)
    }

    /// The numeric value of the id.
    pub fn value(&self) -> u64 {
        self.0
    }

    /// Parses a decimal string of ASCII digits (no sign, no spaces).
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let invalid = || ValidationError::InvalidExperimentId(truncate_for_message(text));
        if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        text.parse::<u64>().map(ExperimentId).map_err(|_| invalid())
    }
}

impl fmt::Display for ExperimentId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

impl fmt::Debug for ExperimentId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ExperimentId({})", self.0)
    }
}

impl FromStr for ExperimentId {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ExperimentId::parse(text)
    }
}

impl Serialize for ExperimentId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ExperimentId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            ExperimentId::parse(&text).map_err(serde::de::Error::custom)
        } else {
            Ok(ExperimentId(u64::deserialize(deserializer)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_round_trips_and_rejects_bad_text() {
        let id = RunId::new_random();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(RunId::parse(&text).unwrap(), id);
        assert!(RunId::parse(&text.to_uppercase()).is_err() || text == text.to_uppercase());
        assert!(RunId::parse("../../etc/passwd").is_err());
        assert!(RunId::parse("0123456789abcdef0123456789abcdeg").is_err());
        assert!(RunId::parse("0123456789ABCDEF0123456789ABCDEF").is_err());
        assert!(RunId::parse("0123456789abcdef0123456789abcde").is_err());
        assert!(RunId::parse("").is_err());
    }

    #[test]
    fn run_id_shards_are_in_range() {
        for _ in 0..100 {
            assert!(RunId::new_random().shard(3) < 3);
        }
        assert_eq!(RunId::new_random().shard(0), 0);
    }

    #[test]
    fn experiment_id_parses_digits_only() {
        assert_eq!(ExperimentId::parse("0").unwrap(), ExperimentId::DEFAULT);
        assert_eq!(ExperimentId::parse("42").unwrap().value(), 42);
        for bad in ["", "-1", "+1", " 1", "1a", "99999999999999999999"] {
            assert!(ExperimentId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_serialize_as_strings_in_json_and_compactly_in_bincode() {
        let id = RunId::new_random();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        let bytes = bincode::serde::encode_to_vec(id, bincode::config::standard()).unwrap();
        assert_eq!(bytes.len(), 16);
        let (back, _): (RunId, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, id);
        assert_eq!(
            serde_json::to_string(&ExperimentId::new(7)).unwrap(),
            "\"7\""
        );
    }
}
