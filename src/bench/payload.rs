//! Request bodies for the load generator, one encoder per protocol: MLflow
//! `log-batch`, stepstore's columnar JSON, NDJSON and Arrow IPC bulk
//! paths. Bodies are written directly (itoa/ryu for numbers), so that the
//! generator costs far less than the server it drives.

use std::sync::Arc;

use arrow::array::{ArrayRef, DictionaryArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{BenchError, Protocol};

/// One request to send.
pub struct Payload {
    /// Path on the target (`/api/2.0/mlflow/runs/log-batch`, ...).
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Metric points it carries.
    pub points: u64,
}

/// Writes request bodies for one worker: each request carries
/// `steps_per_request` consecutive steps of every key for
/// `runs_per_request` of the worker's runs, taken in turn; each run's steps
/// keep increasing.
pub struct PayloadGenerator {
    protocol: Protocol,
    runs: Vec<String>,
    next_steps: Vec<i64>,
    next_run: usize,
    keys: Vec<String>,
    steps_per_request: usize,
    runs_per_request: usize,
    rng: SmallRng,
    arrow_schema: SchemaRef,
}

impl PayloadGenerator {
    /// A generator over `runs` (the worker's share) and `keys`.
    pub fn new(
        protocol: Protocol,
        runs: Vec<String>,
        keys: Vec<String>,
        steps_per_request: usize,
        runs_per_request: usize,
        seed: u64,
    ) -> Self {
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let arrow_schema = Arc::new(Schema::new(vec![
            Field::new("run_id", dictionary.clone(), false),
            Field::new("key", dictionary, false),
            Field::new("step", DataType::Int64, false),
            Field::new("timestamp", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ]));
        PayloadGenerator {
            protocol,
            next_steps: vec![0; runs.len()],
            runs,
            next_run: 0,
            keys,
            steps_per_request: steps_per_request.max(1),
            runs_per_request: runs_per_request.max(1),
            rng: SmallRng::seed_from_u64(seed),
            arrow_schema,
        }
    }

    /// Points in each request.
    pub fn points_per_request(&self) -> u64 {
        (self.keys.len() * self.steps_per_request * self.runs_per_request.min(self.runs.len()))
            as u64
    }

    /// The runs (index, id, first step) of the next request, advancing them.
    fn take_runs(&mut self) -> Vec<(usize, i64)> {
        let count = self.runs_per_request.min(self.runs.len());
        let mut taken = Vec::with_capacity(count);
        for _ in 0..count {
            let index = self.next_run;
            self.next_run = (self.next_run + 1) % self.runs.len();
            taken.push((index, self.next_steps[index]));
            self.next_steps[index] += self.steps_per_request as i64;
        }
        taken
    }

    fn value(&mut self, step: i64) -> f64 {
        // A decaying curve with noise, like a loss.
        1.0 / (1.0 + step as f64 * 1e-3) + self.rng.random::<f64>() * 0.01
    }

    /// The next request body.
    pub fn next(&mut self, timestamp: i64) -> Result<Payload, BenchError> {
        let runs = self.take_runs();
        let points = self.points_per_request();
        let (path, content_type, body) = match self.protocol {
            Protocol::Mlflow => (
                "/api/2.0/mlflow/runs/log-batch",
                "application/json",
                self.mlflow_body(runs[0], timestamp),
            ),
            Protocol::Columnar => (
                "/api/v1/ingest",
                crate::bulk::COLUMNAR_JSON,
                self.columnar_body(&runs, timestamp),
            ),
            Protocol::Ndjson => (
                "/api/v1/ingest",
                crate::bulk::NDJSON,
                self.ndjson_body(&runs, timestamp),
            ),
            Protocol::Arrow => (
                "/api/v1/ingest",
                crate::bulk::ARROW_STREAM,
                self.arrow_body(&runs, timestamp)?,
            ),
        };
        Ok(Payload {
            path,
            content_type,
            body,
            points,
        })
    }

    fn push_value(&mut self, out: &mut Vec<u8>, step: i64) {
        let value = self.value(step);
        out.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
    }

    fn mlflow_body(&mut self, (run, first_step): (usize, i64), timestamp: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.points_per_request() as usize * 72 + 64);
        let mut integers = itoa::Buffer::new();
        out.extend_from_slice(b"{\"run_id\":\"");
        out.extend_from_slice(self.runs[run].as_bytes());
        out.extend_from_slice(b"\",\"metrics\":[");
        let mut first = true;
        for step in first_step..first_step + self.steps_per_request as i64 {
            for key in 0..self.keys.len() {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(b"{\"key\":\"");
                out.extend_from_slice(self.keys[key].as_bytes());
                out.extend_from_slice(b"\",\"value\":");
                self.push_value(&mut out, step);
                out.extend_from_slice(b",\"timestamp\":");
                out.extend_from_slice(integers.format(timestamp).as_bytes());
                out.extend_from_slice(b",\"step\":");
                out.extend_from_slice(integers.format(step).as_bytes());
                out.push(b'}');
            }
        }
        out.extend_from_slice(b"]}");
        out
    }

    fn columnar_body(&mut self, runs: &[(usize, i64)], timestamp: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.points_per_request() as usize * 20 + 256);
        let mut integers = itoa::Buffer::new();
        let steps = self.steps_per_request as i64;
        out.extend_from_slice(b"{\"batches\":[");
        for (position, &(run, first_step)) in runs.iter().enumerate() {
            if position > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"run_id\":\"");
            out.extend_from_slice(self.runs[run].as_bytes());
            out.extend_from_slice(b"\",\"steps\":[");
            for step in first_step..first_step + steps {
                if step > first_step {
                    out.push(b',');
                }
                out.extend_from_slice(integers.format(step).as_bytes());
            }
            out.extend_from_slice(b"],\"timestamps\":[");
            for step in first_step..first_step + steps {
                if step > first_step {
                    out.push(b',');
                }
                out.extend_from_slice(integers.format(timestamp).as_bytes());
            }
            out.extend_from_slice(b"],\"values\":{");
            for key in 0..self.keys.len() {
                if key > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                out.extend_from_slice(self.keys[key].as_bytes());
                out.extend_from_slice(b"\":[");
                for step in first_step..first_step + steps {
                    if step > first_step {
                        out.push(b',');
                    }
                    self.push_value(&mut out, step);
                }
                out.push(b']');
            }
            out.extend_from_slice(b"}}");
        }
        out.extend_from_slice(b"]}");
        out
    }

    fn ndjson_body(&mut self, runs: &[(usize, i64)], timestamp: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.points_per_request() as usize * 110);
        let mut integers = itoa::Buffer::new();
        for &(run, first_step) in runs {
            for step in first_step..first_step + self.steps_per_request as i64 {
                for key in 0..self.keys.len() {
                    out.extend_from_slice(b"{\"run_id\":\"");
                    out.extend_from_slice(self.runs[run].as_bytes());
                    out.extend_from_slice(b"\",\"key\":\"");
                    out.extend_from_slice(self.keys[key].as_bytes());
                    out.extend_from_slice(b"\",\"step\":");
                    out.extend_from_slice(integers.format(step).as_bytes());
                    out.extend_from_slice(b",\"timestamp\":");
                    out.extend_from_slice(integers.format(timestamp).as_bytes());
                    out.extend_from_slice(b",\"value\":");
                    self.push_value(&mut out, step);
                    out.extend_from_slice(b"}\n");
                }
            }
        }
        out
    }

    fn arrow_body(&mut self, runs: &[(usize, i64)], timestamp: i64) -> Result<Vec<u8>, BenchError> {
        let rows = self.points_per_request() as usize;
        let (mut run_keys, mut key_keys) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let (mut steps, mut values) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let run_names: Vec<&str> = runs
            .iter()
            .map(|&(run, _)| self.runs[run].as_str())
            .collect();
        let run_dictionary = Arc::new(arrow::array::StringArray::from(run_names));
        let key_dictionary = Arc::new(arrow::array::StringArray::from(self.keys.clone()));
        for (position, &(_, first_step)) in runs.iter().enumerate() {
            for key in 0..self.keys.len() {
                for step in first_step..first_step + self.steps_per_request as i64 {
                    run_keys.push(position as i32);
                    key_keys.push(key as i32);
                    steps.push(step);
                    let value = self.value(step);
                    values.push(value);
                }
            }
        }
        let encode_error = |error: arrow::error::ArrowError| BenchError::Encode(error.to_string());
        let run_column = DictionaryArray::<Int32Type>::try_new(run_keys.into(), run_dictionary)
            .map_err(encode_error)?;
        let key_column = DictionaryArray::<Int32Type>::try_new(key_keys.into(), key_dictionary)
            .map_err(encode_error)?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(run_column),
            Arc::new(key_column),
            Arc::new(Int64Array::from(steps)),
            Arc::new(Int64Array::from(vec![timestamp; rows])),
            Arc::new(Float64Array::from(values)),
        ];
        let batch =
            RecordBatch::try_new(Arc::clone(&self.arrow_schema), columns).map_err(encode_error)?;
        let mut out = Vec::with_capacity(rows * 30 + 1024);
        let mut writer =
            StreamWriter::try_new(&mut out, &self.arrow_schema).map_err(encode_error)?;
        writer.write(&batch).map_err(encode_error)?;
        writer.finish().map_err(encode_error)?;
        drop(writer);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::now_millis;

    const RUNS: [&str; 2] = [
        "0123456789abcdef0123456789abcdef",
        "fedcba9876543210fedcba9876543210",
    ];

    fn generator(protocol: Protocol, runs_per_request: usize) -> PayloadGenerator {
        PayloadGenerator::new(
            protocol,
            RUNS.iter().map(|run| run.to_string()).collect(),
            vec!["loss".to_string(), "acc".to_string()],
            3,
            runs_per_request,
            7,
        )
    }

    #[test]
    fn bodies_decode_with_the_servers_own_decoders() {
        let now = now_millis();
        let mut columnar = generator(Protocol::Columnar, 2);
        let payload = columnar.next(now).unwrap();
        let decoded = crate::bulk::columnar::decode(&payload.body, now, 1000).unwrap();
        assert_eq!(decoded.points() as u64, payload.points);
        assert_eq!(payload.points, 12);

        let mut ndjson = generator(Protocol::Ndjson, 1);
        let payload = ndjson.next(now).unwrap();
        let mut decoder = crate::bulk::ndjson::NdjsonDecoder::new(now, 1000);
        decoder.feed(&payload.body).unwrap();
        assert_eq!(decoder.finish().unwrap().points() as u64, payload.points);

        let mut arrow = generator(Protocol::Arrow, 2);
        arrow.next(now).unwrap();
        let payload = arrow.next(now).unwrap();
        let batches = crate::bulk::arrow_ipc::decode(payload.body.into(), now, 1000)
            .unwrap()
            .finish();
        assert_eq!(batches.len(), 2);
        // The second request continues each run's steps.
        assert_eq!(batches[0].1.steps[0], 3);

        let mut mlflow = generator(Protocol::Mlflow, 1);
        let payload = mlflow.next(now).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&payload.body).unwrap();
        assert_eq!(json["metrics"].as_array().unwrap().len(), 6);
        assert_eq!(json["run_id"], RUNS[0]);
        assert_eq!(json["metrics"][5]["step"], 2);
    }
}
