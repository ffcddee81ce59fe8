//! Property tests with hostile input: random and mutated bytes fed to every
//! decoder and parser that a client or a file on disk can reach. The only
//! property is that none of them panics (or aborts on a huge allocation):
//! each returns a value or an error.
//!
//! Each property runs `PROPTEST_CASES` cases (10,000 by default, as in CI);
//! for a longer run: `PROPTEST_CASES=1000000 cargo test --release --test
//! hostile_inputs`.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::Config;

use stepstore::bulk::arrow_ipc;
use stepstore::bulk::columnar;
use stepstore::bulk::ndjson::NdjsonDecoder;
use stepstore::catalog::snapshot;
use stepstore::engine::wal_record::WalRecord;
use stepstore::import::tensorboard::event::decode_event;
use stepstore::import::tensorboard::tfrecord::{RecordReader, write_record};
use stepstore::search::filter::{like_matches, parse_filter};
use stepstore::search::runs::parse_run_filter;

const RUN: &str = "0123456789abcdef0123456789abcdef";

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10_000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// `sample` with a few random byte edits (replace, insert, delete).
fn mutated(sample: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..8).prop_map(move |edits| {
        let mut bytes = sample.clone();
        for (position, byte, operation) in edits {
            let index = position % (bytes.len() + 1);
            match operation {
                0 if index < bytes.len() => bytes[index] = byte,
                1 => bytes.insert(index, byte),
                _ if index < bytes.len() => {
                    bytes.remove(index);
                }
                _ => bytes.push(byte),
            }
        }
        bytes
    })
}

/// Random bytes, or a mutation of one of `samples`.
fn hostile(samples: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutations: Vec<_> = samples.into_iter().map(mutated).collect();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::strategy::Union::new(mutations),
    ]
}

fn columnar_sample() -> Vec<u8> {
    format!(
        r#"{{"batches": [{{"run_id": "{RUN}", "steps": [1, 2, 3], "timestamps": [5, 6, 7],
            "values": {{"loss": [0.5, "NaN", null], "acc": [1, 2, "-Infinity"]}}}}]}}"#
    )
    .into_bytes()
}

fn ndjson_sample() -> Vec<u8> {
    format!(
        "{{\"run_id\":\"{RUN}\",\"key\":\"loss\",\"step\":1,\"value\":0.5}}\n\
         {{\"run_id\":\"{RUN}\",\"key\":\"a/b\",\"step\":2,\"value\":\"NaN\",\"timestamp\":9}}\n"
    )
    .into_bytes()
}

fn arrow_sample() -> Vec<u8> {
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::writer::StreamWriter;
    use arrow::record_batch::RecordBatch;
    let schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("timestamp", DataType::Int64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![RUN, RUN])),
        Arc::new(StringArray::from(vec!["loss", "acc"])),
        Arc::new(Int64Array::from(vec![1, 2])),
        Arc::new(Float64Array::from(vec![0.5, f64::NAN])),
        Arc::new(Int64Array::from(vec![7, 8])),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn columnar_json_never_panics(body in hostile(vec![columnar_sample()])) {
        let _ = columnar::decode(&body, 0, 10_000);
    }

    #[test]
    fn ndjson_never_panics(
        body in hostile(vec![ndjson_sample()]),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut decoder = NdjsonDecoder::new(0, 10_000);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        let mut failed = false;
        for cut in cuts.into_iter().chain([body.len()]) {
            if decoder.feed(&body[start..cut]).is_err() {
                failed = true;
                break;
            }
            start = cut;
        }
        if !failed {
            let _ = decoder.finish();
        }
    }

    #[test]
    fn arrow_ipc_never_panics(body in hostile(vec![arrow_sample()])) {
        let _ = arrow_ipc::decode(Bytes::from(body), 0, 10_000);
    }

    #[test]
    fn search_filters_never_panic(
        text in prop_oneof![
            ".{0,200}",
            "(metrics|params|tags|attributes|datasets)\\.[a-z` ]{0,6} ?(=|!=|<|<=|>|>=|LIKE|ILIKE|IN|NOT IN|IS NULL|IS NOT NULL) ?['\"(0-9a-z%_,. -]{0,20}( (AND|and|OR) .{0,30})?",
        ],
        pattern in ".{0,40}",
        value in ".{0,80}",
        case_insensitive in any::<bool>(),
    ) {
        let _ = parse_filter(&text);
        let _ = parse_run_filter(&text);
        let _ = like_matches(&pattern, &value, case_insensitive);
    }

    #[test]
    fn sql_text_through_the_safety_check_never_panics(
        text in prop_oneof![
            ".{0,200}",
            "(SELECT|WITH|EXPLAIN|DESCRIBE|SHOW|INSERT|CREATE|COPY|SET|DROP) [a-z_*(),'0-9 ;.=<>-]{0,80}",
        ],
    ) {
        use datafusion::sql::parser::DFParser;
        if let Ok(statements) = DFParser::parse_sql(&text) {
            for statement in &statements {
                let _ = stepstore::query::safety::check_statement(statement);
            }
        }
    }

    #[test]
    fn tensorboard_records_never_panic(body in hostile(vec![tensorboard_sample()])) {
        let mut reader = RecordReader::new(Cursor::new(&body));
        for _ in 0..64 {
            match reader.next_record() {
                Ok(Some(record)) => {
                    if let Ok(event) = decode_event(&record) {
                        for value in event.summary.iter().flat_map(|summary| &summary.value) {
                            let _ = value.scalar();
                            let _ = stepstore::import::tensorboard::key_for_tag(&value.tag);
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = decode_event(&body);
    }

    #[test]
    fn dvc_lock_files_never_panic(body in hostile(vec![
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dvc/dvc.lock")).unwrap(),
    ])) {
        let text = String::from_utf8_lossy(&body);
        let _ = stepstore::import::dvc::parse_lock(&text, std::path::Path::new("dvc.lock"));
    }

    #[test]
    fn wal_records_never_panic(body in hostile(wal_samples())) {
        let _ = WalRecord::decode(1, &body);
    }

    #[test]
    fn wal_segments_never_panic(body in hostile(vec![wal_segment_sample()])) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(stepstore::wal::segment::segment_path(dir.path(), 1), &body).unwrap();
        let _ = stepstore::wal::replay(dir.path(), |lsn, record| {
            let _ = WalRecord::decode(lsn, record);
            Ok(())
        });
    }

    #[test]
    fn catalog_snapshots_never_panic(body in hostile(vec![snapshot_body_sample()])) {
        // Checksummed as written, so the decoder itself meets the bytes;
        // in today's format and in every one before it.
        for magic in [b"STEPCAT6", b"STEPCAT5", b"STEPCAT4", b"STEPCAT3", b"STEPCAT2"] {
            let dir = tempfile::tempdir().unwrap();
            let mut file = magic.to_vec();
            file.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            file.extend_from_slice(&body);
            std::fs::write(dir.path().join("snapshot-00000000000000000001.bin"), &file).unwrap();
            let _ = snapshot::load_latest(dir.path());
        }
    }
}

fn tensorboard_sample() -> Vec<u8> {
    use prost::Message;
    use stepstore::import::tensorboard::event::{Event, Summary, SummaryValue};
    let event = Event {
        wall_time: 1.5,
        step: 3,
        file_version: None,
        summary: Some(Summary {
            value: vec![SummaryValue {
                tag: "loss".to_string(),
                simple_value: Some(0.25),
                ..SummaryValue::default()
            }],
        }),
    };
    let mut out = Vec::new();
    write_record(&mut out, &event.encode_to_vec()).unwrap();
    write_record(&mut out, b"not an event").unwrap();
    out
}

/// Bodies of real WAL records: a catalog change and a metric batch, from a
/// real engine's log.
fn wal_samples() -> Vec<Vec<u8>> {
    let segment = wal_segment_sample();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        stepstore::wal::segment::segment_path(dir.path(), 1),
        &segment,
    )
    .unwrap();
    let mut bodies = Vec::new();
    stepstore::wal::replay(dir.path(), |_, body| {
        bodies.push(body.to_vec());
        Ok(())
    })
    .unwrap();
    assert!(bodies.len() >= 2, "{} records", bodies.len());
    bodies
}

/// The first WAL segment of an engine that created a run and logged points.
fn wal_segment_sample() -> Vec<u8> {
    static SAMPLE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(engine_samples).0.clone()
}

/// The body of a catalog snapshot of that engine.
fn snapshot_body_sample() -> Vec<u8> {
    static SAMPLE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(engine_samples).1.clone()
}

/// An engine on `dir` holding one experiment and one run (with a param
/// and tags), made on `runtime`.
fn engine_with_run(
    dir: &std::path::Path,
    sync: stepstore::wal::SyncPolicy,
    runtime: &tokio::runtime::Runtime,
) -> (
    Arc<stepstore::engine::Engine>,
    stepstore::model::ExperimentId,
    stepstore::model::RunId,
) {
    use stepstore::catalog::{NewExperiment, NewRun};
    use stepstore::engine::{Engine, EngineConfig};
    let mut config = EngineConfig::new(dir);
    config.wal_sync = sync;
    let engine = Engine::open(config).unwrap();
    let (experiment, run) = runtime.block_on(async {
        let experiment = engine
            .create_experiment(NewExperiment {
                name: "fuzz".to_string(),
                artifact_location: None,
                tags: vec![("team".to_string(), "a".to_string())],
            })
            .await
            .unwrap();
        let run = engine
            .create_run(NewRun {
                experiment_id: experiment,
                run_name: Some("r".to_string()),
                user_id: "u".to_string(),
                start_time: 1,
                params: vec![("lr".to_string(), "0.1".to_string())],
                tags: vec![("team".to_string(), "a".to_string())],
            })
            .await
            .unwrap();
        (experiment, run.run_id)
    });
    (engine, experiment, run)
}

fn engine_samples() -> (Vec<u8>, Vec<u8>) {
    use stepstore::model::MetricBatchBuilder;
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (engine, _, run) =
        engine_with_run(dir.path(), stepstore::wal::SyncPolicy::Always, &runtime);
    runtime.block_on(async {
        let mut batch = MetricBatchBuilder::new();
        batch.push("loss", 1, 5, 0.5);
        batch.push("acc", 1, 5, f64::NAN);
        engine.log_metrics(run, batch.finish()).await.unwrap();
    });
    let wal_dir = dir.path().join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    segments.sort();
    let segment = std::fs::read(&segments[0]).unwrap();
    let catalog = engine.catalog_state();
    let body = bincode::serde::encode_to_vec(&catalog, bincode::config::standard()).unwrap();
    let _ = engine.shutdown();
    (segment, body)
}

/// Every single-byte change, insertion and deletion of a valid Arrow
/// stream (the kind of damage that makes arrow-rs's reader panic on a
/// buffer offset).
#[test]
fn arrow_ipc_single_byte_edits_never_panic() {
    let sample = arrow_sample();
    for position in 0..sample.len() {
        let mut removed = sample.clone();
        removed.remove(position);
        let _ = arrow_ipc::decode(Bytes::from(removed), 0, 10_000);
        for value in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut changed = sample.clone();
            changed[position] = value;
            let _ = arrow_ipc::decode(Bytes::from(changed), 0, 10_000);
            let mut inserted = sample.clone();
            inserted.insert(position, value);
            let _ = arrow_ipc::decode(Bytes::from(inserted), 0, 10_000);
        }
    }
}

/// MLflow (and native) JSON bodies of every kind, random and mutated, sent
/// through the real router to a real engine: never a panic, never a 500.
#[test]
fn mlflow_json_bodies_never_panic_or_fail_inside() {
    use axum::body::Body;
    use axum::http::Request;
    use stepstore::server::{self, ServerConfig};
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (engine, experiment, run) =
        engine_with_run(dir.path(), stepstore::wal::SyncPolicy::Off, &runtime);
    let (experiment, run) = (experiment.to_string(), run.to_string());
    let router = server::router(Arc::clone(&engine), &ServerConfig::default());
    let endpoints: Vec<(&str, String)> = vec![
        (
            "/api/2.0/mlflow/runs/log-batch",
            format!(
                r#"{{"run_id":"{run}","metrics":[{{"key":"m","value":1.5,"timestamp":1,"step":2}}],"params":[{{"key":"p","value":"v"}}],"tags":[{{"key":"t","value":"w"}}]}}"#
            ),
        ),
        (
            "/api/2.0/mlflow/runs/log-metric",
            format!(r#"{{"run_id":"{run}","key":"m","value":"NaN","timestamp":1,"step":3}}"#),
        ),
        (
            "/api/2.0/mlflow/runs/log-parameter",
            format!(r#"{{"run_id":"{run}","key":"q","value":"1"}}"#),
        ),
        (
            "/api/2.0/mlflow/runs/set-tag",
            format!(r#"{{"run_id":"{run}","key":"k","value":"v"}}"#),
        ),
        (
            "/api/2.0/mlflow/runs/create",
            format!(
                r#"{{"experiment_id":"{experiment}","run_name":"x","start_time":5,"tags":[{{"key":"a","value":"b"}}]}}"#
            ),
        ),
        (
            "/api/2.0/mlflow/runs/update",
            format!(r#"{{"run_id":"{run}","status":"RUNNING","end_time":9}}"#),
        ),
        (
            "/api/2.0/mlflow/runs/search",
            format!(
                r#"{{"experiment_ids":["{experiment}"],"filter":"metrics.m > 1 and params.q = '1'","order_by":["metrics.m DESC"],"max_results":10}}"#
            ),
        ),
        (
            "/api/2.0/mlflow/runs/log-inputs",
            format!(
                r#"{{"run_id":"{run}","datasets":[{{"dataset":{{"name":"d","digest":"x","source_type":"s","source":"{{}}"}},"tags":[{{"key":"mlflow.data.context","value":"train"}}]}}]}}"#
            ),
        ),
        (
            "/api/2.0/mlflow/experiments/create",
            r#"{"name":"e","tags":[{"key":"a","value":"b"}]}"#.to_string(),
        ),
        (
            "/api/2.0/mlflow/experiments/search",
            r#"{"max_results":5,"filter":"name LIKE 'f%'","order_by":["name"]}"#.to_string(),
        ),
        (
            "/api/2.0/mlflow/experiments/update",
            format!(r#"{{"experiment_id":"{experiment}","new_name":"fuzz"}}"#),
        ),
        (
            "/api/2.0/mlflow/metrics/get-history-bulk-interval",
            format!(r#"{{"run_ids":["{run}"],"metric_key":"m","max_results":10}}"#),
        ),
        (
            "/graphql",
            format!(
                r#"{{"query":"query q($id: String) {{ mlflowGetRun(input: {{runId: $id}}) {{ run {{ info {{ runId status }} }} }} }}","variables":{{"id":"{run}"}}}}"#
            ),
        ),
        (
            "/api/v1/scalars",
            format!(r#"{{"runs":["{run}"],"keys":["m*"],"max_points":8,"smoothing":0.5}}"#),
        ),
        (
            "/api/v1/runs",
            format!(r#"{{"experiment_id":"{experiment}","params":{{"a":{{"b":1}}}}}}"#),
        ),
    ];
    let samples: Vec<Vec<u8>> = endpoints
        .iter()
        .map(|(_, body)| body.clone().into_bytes())
        .collect();
    let mut runner = proptest::test_runner::TestRunner::new(config());
    let strategy = (0..endpoints.len(), hostile(samples));
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let refused = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&strategy, |(index, body)| {
            let (path, _) = &endpoints[index];
            let request = Request::post(*path)
                .header("content-type", "application/json")
                .header("host", "127.0.0.1")
                .body(Body::from(body))
                .unwrap();
            let response = runtime.block_on(router.clone().oneshot(request)).unwrap();
            let status = response.status().as_u16();
            prop_assert_ne!(status, 500, "{}", path);
            let counter = if status == 200 { &accepted } else { &refused };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    // Both sides of the decoders were exercised.
    let (accepted, refused) = (accepted.into_inner(), refused.into_inner());
    eprintln!("{accepted} bodies accepted, {refused} refused");
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    drop(router);
    let _ = engine.shutdown();
}
