//! Page tokens in MLflow's format: base64 of `{"offset": N}`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::SearchError;

#[derive(Serialize, Deserialize)]
struct PageToken {
    offset: usize,
}

/// The token of the page that starts at `offset`.
pub fn encode_offset(offset: usize) -> String {
    let json = serde_json::to_vec(&PageToken { offset }).unwrap_or_default();
    STANDARD.encode(json)
}

/// The offset a token stands for.
pub fn decode_offset(token: &str) -> Result<usize, SearchError> {
    let bytes = STANDARD
        .decode(token.trim())
        .map_err(|error| SearchError::InvalidPageToken(format!("not base64: {error}")))?;
    let parsed: PageToken = serde_json::from_slice(&bytes).map_err(|error| {
        SearchError::InvalidPageToken(format!("not a token this server issued: {error}"))
    })?;
    Ok(parsed.offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_match_mlflow() {
        assert_eq!(decode_offset(&encode_offset(1234)).unwrap(), 1234);
        // What MLflow's `SearchUtils.create_page_token(100)` produces.
        assert_eq!(decode_offset("eyJvZmZzZXQiOiAxMDB9").unwrap(), 100);
        assert!(decode_offset("!!").is_err());
        assert!(decode_offset("e30=").is_err());
    }
}
