//! stepstore: an experiment-tracking metrics engine.
//!
//! Trainers stream `(run, key, step, timestamp, value)` points; the engine
//! makes them durable in a write-ahead log, batches them into per-run Arrow
//! buffers and persists them as Parquet files per run. A context store keeps
//! experiments, runs, params and tags. See `DESIGN.md` for the whole picture.

pub mod auth;
pub mod bench;
mod bounded_decode;
pub mod bulk;
pub mod catalog;
pub mod durable_fs;
pub mod engine;
pub mod error_kind;
pub mod import;
pub mod ingest;
pub mod model;
pub mod observability;
pub mod query;
pub mod scalars;
pub mod search;
pub mod server;
pub mod storage;
pub mod wal;
