//! Searching runs and experiments the way MLflow does: its filter grammar,
//! its `order_by` clauses, its ordering of missing and NaN values, and its
//! offset-based page tokens.

pub mod experiments;
pub mod filter;
pub mod page;
pub mod runs;

use thiserror::Error;

use crate::error_kind::{Classify, ErrorKind};

/// The most results one search page may ask for (MLflow's limit).
pub const MAX_RESULTS_LIMIT: usize = 50_000;
/// The page size when a search does not say.
pub const DEFAULT_MAX_RESULTS: usize = 1_000;

/// Errors of a search request: all are the client's.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SearchError {
    /// The filter does not parse, or compares something it cannot.
    #[error("Invalid filter: {0}")]
    InvalidFilter(String),
    /// An `order_by` clause does not parse or names an unknown field.
    #[error("Invalid order_by: {0}")]
    InvalidOrderBy(String),
    /// The page token was not produced by this server.
    #[error("Invalid page token: {0}")]
    InvalidPageToken(String),
    /// `max_results` is out of range.
    #[error(
        "Invalid value for request parameter max_results. It must be at most {limit}, but got \
         value {got}"
    )]
    MaxResultsTooLarge {
        /// The requested page size.
        got: i64,
        /// The limit.
        limit: usize,
    },
    /// `max_results` is zero or negative.
    #[error(
        "Invalid value for request parameter max_results. It must be a positive integer, but got \
         value {0}"
    )]
    MaxResultsNotPositive(i64),
}

impl SearchError {
    /// An invalid `order_by` clause when `in_order_by`, else an invalid filter.
    pub fn invalid_clause(in_order_by: bool, message: String) -> Self {
        if in_order_by {
            SearchError::InvalidOrderBy(message)
        } else {
            SearchError::InvalidFilter(message)
        }
    }
}

impl Classify for SearchError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidParameter
    }
}

/// Checks a requested page size and applies the default.
pub fn page_size(max_results: Option<i64>) -> Result<usize, SearchError> {
    match max_results {
        None => Ok(DEFAULT_MAX_RESULTS),
        Some(value) if value <= 0 => Err(SearchError::MaxResultsNotPositive(value)),
        Some(value) if value as u64 > MAX_RESULTS_LIMIT as u64 => {
            Err(SearchError::MaxResultsTooLarge {
                got: value,
                limit: MAX_RESULTS_LIMIT,
            })
        }
        Some(value) => Ok(value as usize),
    }
}

/// One page of results and the token for the next page, if there is one.
#[derive(Debug)]
pub struct Page<T> {
    /// The results of this page.
    pub items: Vec<T>,
    /// The token that fetches the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Cuts one page out of fully ordered results.
pub fn paginate<T>(
    mut ordered: Vec<T>,
    page_token: Option<&str>,
    size: usize,
) -> Result<Page<T>, SearchError> {
    let offset = match page_token {
        None | Some("") => 0,
        Some(token) => page::decode_offset(token)?,
    };
    let total = ordered.len();
    let end = offset.saturating_add(size).min(total);
    let items: Vec<T> = if offset >= total {
        Vec::new()
    } else {
        ordered.drain(offset..end).collect()
    };
    let next_page_token = (end < total).then(|| page::encode_offset(end));
    Ok(Page {
        items,
        next_page_token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(None).unwrap(), DEFAULT_MAX_RESULTS);
        assert_eq!(page_size(Some(5)).unwrap(), 5);
        assert!(page_size(Some(0)).is_err());
        assert!(page_size(Some(50_001)).is_err());
    }

    #[test]
    fn pages_cover_everything_once() {
        let all: Vec<u32> = (0..25).collect();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = paginate(all.clone(), token.as_deref(), 10).unwrap();
            seen.extend(page.items);
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, all);
        let exact = paginate((0..10).collect::<Vec<u32>>(), None, 10).unwrap();
        assert!(exact.next_page_token.is_none());
        assert!(paginate(all, Some("not a token"), 10).is_err());
    }
}
