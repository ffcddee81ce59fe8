//! `stepstore import dvc` on lock files written by the real dvc (3.67.1,
//! from the package registry; `scripts/make_dvc_samples.sh` writes them
//! again): a three-stage pipeline, then the same pipeline reproduced after
//! a change of `train.lr`. Each stage execution becomes one finished run
//! with its params and lineage (imported again: skipped), and a trainer
//! run that records dvc's model as its input joins the pipeline's lineage.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestServer;
use serde_json::{Value, json};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/dvc");

fn import(lock: &Path, data_dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_stepstore"))
        .args(["import", "dvc"])
        .arg(lock)
        .args(["--experiment", "pipeline", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run stepstore import dvc");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn sql(server: &TestServer, query: &str) -> Vec<Value> {
    let (status, answer) = server.request("POST", "/api/v1/sql", Some(&json!({"query": query})));
    assert_eq!(status, 200, "{query}: {answer}");
    answer["rows"].as_array().unwrap().clone()
}

#[test]
fn a_dvc_pipeline_becomes_runs_with_lineage_that_trainers_join() {
    let repo = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let lock = repo.path().join("dvc.lock");
    std::fs::copy(Path::new(SAMPLES).join("dvc.lock"), &lock).unwrap();
    let (ok, text) = import(&lock, data.path());
    assert!(ok, "{text}");
    assert!(
        text.contains("imported 3 stages (10 lineage events)"),
        "{text}"
    );
    // The same file again: nothing new.
    let (ok, text) = import(&lock, data.path());
    assert!(ok && text.contains("imported 0 stages"), "{text}");
    // Reproduced after a change of train.lr: train and evaluate ran again.
    std::fs::copy(Path::new(SAMPLES).join("dvc-after-lr-change.lock"), &lock).unwrap();
    let (ok, text) = import(&lock, data.path());
    assert!(ok, "{text}");
    assert!(text.contains("imported 2 stages"), "{text}");
    assert!(text.contains("skipped prepare: imported before"), "{text}");

    let server = TestServer::start(data.path(), &[]);
    let runs = sql(
        &server,
        "SELECT r.run_name, r.status, p.value AS lr FROM runs r \
         LEFT JOIN params p ON p.run_id = r.run_id AND p.key = 'train.lr' \
         ORDER BY r.run_name, lr",
    );
    assert_eq!(
        runs,
        [
            json!({"run_name": "evaluate", "status": "FINISHED", "lr": null}),
            json!({"run_name": "evaluate", "status": "FINISHED", "lr": null}),
            json!({"run_name": "prepare", "status": "FINISHED", "lr": null}),
            json!({"run_name": "train", "status": "FINISHED", "lr": "0.001"}),
            json!({"run_name": "train", "status": "FINISHED", "lr": "0.01"}),
        ]
    );
    let params = sql(
        &server,
        "SELECT p.key, p.value FROM params p JOIN runs r ON r.run_id = p.run_id \
         WHERE r.run_name = 'prepare' ORDER BY p.key",
    );
    assert_eq!(
        params,
        [
            json!({"key": "prepare.seed", "value": "20170428"}),
            json!({"key": "prepare.split", "value": "0.2"}),
        ]
    );
    let commands = sql(
        &server,
        "SELECT DISTINCT value FROM tags WHERE key = 'dvc.cmd' ORDER BY value",
    );
    assert_eq!(commands.len(), 3, "{commands:?}");

    // The prepared data: one directory artifact, consumed by every train
    // and evaluate run.
    let directories = server.get("/api/v1/artifacts?type=directory");
    let directories = directories["artifacts"].as_array().unwrap();
    assert_eq!(directories.len(), 1, "{directories:?}");
    let prepared = &directories[0];
    assert_eq!(prepared["name"], "data/prepared");
    assert_eq!(prepared["digest"], "8baf70b298fcdbae3116b66d5eebfde8.dir");
    assert_eq!(prepared["properties"]["nfiles"], "2");
    assert_eq!(prepared["properties"]["hash"], "md5");
    let uri = prepared["uri"].as_str().unwrap();
    assert!(
        uri.ends_with("/data/prepared") && uri.starts_with('/'),
        "{uri}"
    );
    let consumers = sql(
        &server,
        "SELECT r.run_name, count(*) AS n FROM events e JOIN runs r ON r.run_id = e.run_id \
         JOIN artifacts a ON a.artifact_id = e.artifact_id \
         WHERE a.name = 'data/prepared' AND e.type = 'INPUT' GROUP BY r.run_name ORDER BY r.run_name",
    );
    assert_eq!(
        consumers,
        [
            json!({"run_name": "evaluate", "n": 2}),
            json!({"run_name": "train", "n": 2})
        ]
    );

    // A trainer that read the newer model records it as dvc names it:
    // found by identity, so its upstream is the dvc pipeline.
    let trainer = server.create_run("finetune", "finetune");
    let (status, answer) = server.request(
        "POST",
        &format!("/api/v1/runs/{trainer}/inputs"),
        Some(&json!({"artifacts": [{"type": "file", "name": "model.json",
                                     "uri": "anything", "digest": "467ecefa20491e366b96091c071de330"}]})),
    );
    assert_eq!(status, 200, "{answer}");
    let graph = server.get(&format!("/api/v1/lineage?run={trainer}&direction=upstream"));
    let mut names: Vec<String> = graph["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["run_name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["finetune", "prepare", "train"], "{graph}");
    let lr = sql(
        &server,
        &format!(
            "SELECT p.value FROM events e JOIN params p ON p.run_id = e.run_id AND p.key = 'train.lr' \
             WHERE e.type = 'OUTPUT' AND e.artifact_id = '{}'",
            answer["events"][0]["artifact_id"].as_str().unwrap()
        ),
    );
    assert_eq!(
        lr,
        [json!({"value": "0.01"})],
        "the model came from the lr=0.01 run"
    );
}

#[test]
fn files_that_are_not_lock_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("dvc.lock");
    std::fs::write(&lock, "stages:\n  a:\n    cmd: x\n").unwrap();
    let (ok, text) = import(&lock, &dir.path().join("data"));
    assert!(!ok);
    assert!(text.contains("not a dvc lock file"), "{text}");
    let (ok, text) = import(&dir.path().join("missing.lock"), &dir.path().join("data"));
    assert!(!ok);
    assert!(text.contains("cannot read"), "{text}");
}
