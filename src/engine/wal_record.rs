//! The records the engine writes to the WAL: catalog mutations and metric
//! batches (alone, or with the receipt of the keyed request that sent
//! them), bincode-encoded behind a format version byte.

use serde::{Deserialize, Serialize};

use crate::catalog::CatalogMutation;
use crate::catalog::receipts::IngestReceipt;
use crate::model::{MetricBatch, RunId};
use crate::wal::{Lsn, WalError};

/// Version byte at the start of every record body.
const RECORD_VERSION: u8 = 3;

/// A decoded WAL record.
#[derive(Debug, Deserialize)]
pub enum WalRecord {
    /// A change to experiments, runs, params or tags.
    Catalog(CatalogMutation),
    /// Metric points of one or more runs, written together.
    Metrics(Vec<(RunId, MetricBatch)>),
    /// Metric points sent with an `Idempotency-Key`, and the request's
    /// receipt (durable together, so a repeat is recognised after a crash).
    KeyedMetrics(IngestReceipt, Vec<(RunId, MetricBatch)>),
}

/// The same record, borrowed, for encoding without copying a batch.
#[derive(Debug, Serialize)]
pub enum WalRecordRef<'a> {
    /// A change to experiments, runs, params or tags.
    Catalog(&'a CatalogMutation),
    /// Metric points of one or more runs, written together.
    Metrics(&'a [(RunId, MetricBatch)]),
    /// Metric points with the receipt of the keyed request that sent them.
    KeyedMetrics(&'a IngestReceipt, &'a [(RunId, MetricBatch)]),
}

impl WalRecordRef<'_> {
    /// The record body: version byte, then bincode.
    pub fn encode(&self) -> Result<Vec<u8>, WalError> {
        let mut body = vec![RECORD_VERSION];
        bincode::serde::encode_into_std_write(self, &mut body, bincode::config::standard())
            .map_err(|error| WalError::Decode {
                lsn: 0,
                message: format!("cannot encode record: {error}"),
            })?;
        Ok(body)
    }
}

impl WalRecord {
    /// Whether a record body holds a catalog change, read from its first
    /// bytes without decoding a metric batch (bincode writes the variant
    /// index first, as a varint: 0 for `Catalog`).
    pub fn is_catalog(body: &[u8]) -> bool {
        body.first() == Some(&RECORD_VERSION) && body.get(1) == Some(&0)
    }

    /// Decodes the body of record `lsn`.
    pub fn decode(lsn: Lsn, body: &[u8]) -> Result<WalRecord, WalError> {
        let decode_error = |message: String| WalError::Decode { lsn, message };
        let (&version, rest) = body
            .split_first()
            .ok_or_else(|| decode_error("empty record".to_string()))?;
        if version != RECORD_VERSION {
            return Err(decode_error(format!("unknown record version {version}")));
        }
        let (record, used) =
            crate::bounded_decode::decode(rest).map_err(|error| decode_error(error.to_string()))?;
        if used != rest.len() {
            return Err(decode_error(format!(
                "{} trailing bytes after the record",
                rest.len() - used
            )));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MetricBatchBuilder;

    #[test]
    fn catalog_records_are_told_apart_without_decoding() {
        let mutation = CatalogMutation::DeleteRunTag {
            run_id: RunId::new_random(),
            key: "k".into(),
        };
        let catalog = WalRecordRef::Catalog(&mutation).encode().unwrap();
        assert!(WalRecord::is_catalog(&catalog));
        let mut builder = MetricBatchBuilder::new();
        builder.push("loss", 3, 1000, 0.5);
        let metrics = WalRecordRef::Metrics(&[(RunId::new_random(), builder.finish())])
            .encode()
            .unwrap();
        assert!(!WalRecord::is_catalog(&metrics));
        assert!(!WalRecord::is_catalog(&[]));
    }

    #[test]
    fn metric_records_round_trip_bit_exactly() {
        let mut builder = MetricBatchBuilder::new();
        builder.push("loss", 3, 1000, f64::NAN);
        builder.push("acc", -1, 1001, f64::NEG_INFINITY);
        let batch = builder.finish();
        let run_id = RunId::new_random();
        let body = WalRecordRef::Metrics(&[(run_id, batch.clone())])
            .encode()
            .unwrap();
        match WalRecord::decode(1, &body).unwrap() {
            WalRecord::Metrics(mut runs) => {
                assert_eq!(runs.len(), 1);
                let (decoded_run, decoded) = runs.remove(0);
                assert_eq!(decoded_run, run_id);
                assert_eq!(decoded.keys, batch.keys);
                assert_eq!(decoded.steps, batch.steps);
                let bits = |values: &[f64]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&decoded.values), bits(&batch.values));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn keyed_records_round_trip_and_are_not_catalog_records() {
        let mut builder = MetricBatchBuilder::new();
        builder.push("loss", 3, 1000, 0.5);
        let runs = [(RunId::new_random(), builder.finish())];
        let receipt = IngestReceipt {
            key: "k".to_string(),
            body_crc: 1,
            body_len: 2,
            points: 1,
            runs: 1,
            time: 5,
        };
        let body = WalRecordRef::KeyedMetrics(&receipt, &runs)
            .encode()
            .unwrap();
        assert!(!WalRecord::is_catalog(&body));
        match WalRecord::decode(1, &body).unwrap() {
            WalRecord::KeyedMetrics(decoded, decoded_runs) => {
                assert_eq!(decoded, receipt);
                assert_eq!(decoded_runs.len(), 1);
                assert_eq!(decoded_runs[0].0, runs[0].0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn damaged_bodies_are_errors() {
        assert!(WalRecord::decode(1, &[]).is_err());
        assert!(WalRecord::decode(1, &[9, 0]).is_err());
        let body = WalRecordRef::Catalog(&CatalogMutation::DeleteRunTag {
            run_id: RunId::new_random(),
            key: "k".into(),
        })
        .encode()
        .unwrap();
        assert!(WalRecord::decode(1, &body[..body.len() - 1]).is_err());
        let mut longer = body.clone();
        longer.push(0);
        assert!(WalRecord::decode(1, &longer).is_err());
        assert!(WalRecord::decode(1, &body).is_ok());
    }
}
