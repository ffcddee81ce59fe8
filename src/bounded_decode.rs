//! Decoding bincode from bytes that a file on disk holds, with a bound on
//! the memory the decoder may claim. bincode allocates a container as soon
//! as it reads its length, so a damaged or hostile length would otherwise
//! ask for exabytes and abort the process. The bound grows with the input:
//! at most 64 bytes of memory per byte decoded (a `Vec<String>` claims 24
//! bytes per element, each element at least one byte long), in tiers
//! because bincode takes its limit as a constant.

use bincode::config::{self, Config};
use serde::de::DeserializeOwned;

/// Memory claimed per input byte, at most.
const CLAIM_PER_BYTE: usize = 64;

/// Decodes a `T` from `bytes` (bincode's standard configuration), with
/// the claim bound; returns the value and the bytes used.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    let bound = bytes.len().saturating_mul(CLAIM_PER_BYTE);
    if bound <= 1 << 20 {
        decode_with(bytes, config::standard().with_limit::<{ 1 << 20 }>())
    } else if bound <= 64 << 20 {
        decode_with(bytes, config::standard().with_limit::<{ 64 << 20 }>())
    } else if bound <= 1 << 30 {
        decode_with(bytes, config::standard().with_limit::<{ 1 << 30 }>())
    } else if bound <= 16 << 30 {
        decode_with(bytes, config::standard().with_limit::<{ 16 << 30 }>())
    } else {
        decode_with(bytes, config::standard().with_limit::<{ 256 << 30 }>())
    }
}

fn decode_with<T: DeserializeOwned, C: Config>(
    bytes: &[u8],
    config: C,
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_length_is_an_error_not_an_abort() {
        // A Vec<String> whose length claims 2^62 elements.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        bytes.extend_from_slice(b"abc");
        let decoded: Result<(Vec<String>, usize), _> = decode(&bytes);
        assert!(decoded.is_err());
        // Real data decodes as before.
        let value = vec!["a".to_string(), "bc".to_string()];
        let encoded = bincode::serde::encode_to_vec(&value, config::standard()).unwrap();
        let (back, used): (Vec<String>, usize) = decode(&encoded).unwrap();
        assert_eq!((back, used), (value, encoded.len()));
    }
}
