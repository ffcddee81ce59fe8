//! `stepstore import dvc PATH/dvc.lock`: a dvc pipeline's lineage. Each
//! stage of the lock file becomes a finished run (its name, `cmd` as the
//! `dvc.cmd` tag, its params as params), its deps INPUT and its outs OUTPUT
//! artifacts with their digests, so the pipeline joins the runs that
//! trained on its outputs.
//!
//! Artifacts are `file`s, or `directory`s when dvc's md5 ends in `.dir`;
//! named by their path in the repository, digested by dvc's hash (`md5`,
//! `etag` or `checksum`), with the hash kind, size and file count as
//! properties; their uri is the absolute path. A stage whose command and
//! hashes were imported before (tag `dvc.stage_digest`) is skipped, so the
//! lock file can be imported again after each `dvc repro`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;
use yaml_rust2::{Yaml, YamlLoader};

use crate::auth::Principal;
use crate::catalog::lineage::ArtifactRef;
use crate::catalog::{NewExperiment, NewRun, RunUpdate};
use crate::engine::{Engine, EngineError, ViewType};
use crate::error_kind::{Classify, ErrorKind};
use crate::model::lineage::{EventKind, NewArtifact};
use crate::model::{RunStatus, now_millis};

/// Largest lock file read.
const MAX_LOCK_BYTES: u64 = 64 << 20;
/// The tag holding a stage's command.
pub const CMD_TAG: &str = "dvc.cmd";
/// The tag identifying an imported stage execution.
pub const STAGE_DIGEST_TAG: &str = "dvc.stage_digest";
/// The tag holding the lock file a run was imported from.
pub const LOCK_TAG: &str = "dvc.lock";

/// Errors of the dvc importer.
#[derive(Debug, Error)]
pub enum DvcError {
    /// The lock file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than a lock file can be.
    #[error("{path} is {bytes} bytes: larger than a dvc lock file can be (64 MiB)")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// Not YAML.
    #[error("{path} is not YAML: {source}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: yaml_rust2::ScanError,
    },
    /// YAML, but not a dvc lock file of a known schema.
    #[error("{path} is not a dvc lock file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The engine refused a change.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Classify for DvcError {
    fn kind(&self) -> ErrorKind {
        match self {
            DvcError::Engine(error) => error.kind(),
            DvcError::Io { .. } => ErrorKind::Internal,
            DvcError::TooLarge { .. } | DvcError::Yaml { .. } | DvcError::Format { .. } => {
                ErrorKind::InvalidParameter
            }
        }
    }
}

/// A file or directory a stage depends on or produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DvcFile {
    /// Its path in the repository.
    pub path: String,
    /// Which hash: `md5`, `etag`, `checksum`.
    pub hash: String,
    /// The hash's value (`.dir` at the end for a directory's md5).
    pub digest: String,
    /// Bytes, when recorded.
    pub size: Option<i64>,
    /// Files of a directory, when recorded.
    pub nfiles: Option<i64>,
}

/// One stage of a lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DvcStage {
    /// Its name (`train`, or `train@1` for a foreach stage).
    pub name: String,
    /// Its command.
    pub cmd: String,
    /// Its dependencies.
    pub deps: Vec<DvcFile>,
    /// Its outputs.
    pub outs: Vec<DvcFile>,
    /// Its params, dotted keys (`<file>:<key>` outside `params.yaml`).
    pub params: BTreeMap<String, String>,
}

impl DvcStage {
    /// What identifies this execution of the stage: its command, its
    /// params and every hash of its deps and outs.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.name.as_bytes());
        hasher.update([0]);
        hasher.update(self.cmd.as_bytes());
        for (key, value) in &self.params {
            hasher.update(format!("\0param\0{key}\0{value}").as_bytes());
        }
        for (kind, files) in [("deps", &self.deps), ("outs", &self.outs)] {
            for file in files {
                hasher.update(format!("\0{kind}\0{}\0{}", file.path, file.digest).as_bytes());
            }
        }
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// A YAML scalar as the string a param is stored as (Python's `str()`, as
/// dvc and MLflow write them).
fn scalar_text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(text) | Yaml::Real(text) => Some(text.clone()),
        Yaml::Integer(number) => Some(number.to_string()),
        Yaml::Boolean(true) => Some("True".to_string()),
        Yaml::Boolean(false) => Some("False".to_string()),
        Yaml::Null => Some("None".to_string()),
        _ => None,
    }
}

fn flatten_params(prefix: &str, value: &Yaml, out: &mut BTreeMap<String, String>) {
    match value {
        Yaml::Hash(map) => {
            for (key, nested) in map {
                let Some(key) = scalar_text(key) else {
                    continue;
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten_params(&name, nested, out);
            }
        }
        Yaml::Array(items) => {
            for (index, nested) in items.iter().enumerate() {
                flatten_params(&format!("{prefix}.{index}"), nested, out);
            }
        }
        other => {
            if let Some(text) = scalar_text(other) {
                out.insert(prefix.to_string(), text);
            }
        }
    }
}

fn parse_file(entry: &Yaml, path: &Path) -> Result<DvcFile, DvcError> {
    let format = |reason: String| DvcError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let file_path = entry["path"]
        .as_str()
        .ok_or_else(|| format("a dep or out without a path".to_string()))?;
    let (hash, digest) = ["md5", "etag", "checksum", "sha256"]
        .iter()
        .find_map(|kind| scalar_text(&entry[*kind]).map(|value| (kind.to_string(), value)))
        .filter(|(_, value)| value != "None")
        .ok_or_else(|| format!("'{file_path}' has no md5, etag or checksum"))
        .map_err(format)?;
    Ok(DvcFile {
        path: file_path.to_string(),
        hash,
        digest,
        size: entry["size"].as_i64(),
        nfiles: entry["nfiles"].as_i64(),
    })
}

/// Parses a dvc lock file (schema 2.0, written by dvc 2 and 3).
pub fn parse_lock(text: &str, path: &Path) -> Result<Vec<DvcStage>, DvcError> {
    let format = |reason: &str| DvcError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let documents = YamlLoader::load_from_str(text).map_err(|source| DvcError::Yaml {
        path: path.to_path_buf(),
        source,
    })?;
    let document = documents
        .first()
        .ok_or_else(|| format("the file is empty"))?;
    match scalar_text(&document["schema"]).as_deref() {
        Some("2.0") => {}
        Some(other) => {
            return Err(format(&format!(
                "schema '{other}' is not one this importer knows (2.0)"
            )));
        }
        None => {
            return Err(format(
                "no 'schema: 2.0' (lock files of dvc 1 are not supported)",
            ));
        }
    }
    let stages = document["stages"]
        .as_hash()
        .ok_or_else(|| format("no 'stages' map"))?;
    let mut parsed = Vec::with_capacity(stages.len());
    for (name, stage) in stages {
        let name = scalar_text(name).ok_or_else(|| format("a stage name is not a string"))?;
        let cmd = match &stage["cmd"] {
            Yaml::Array(lines) => lines
                .iter()
                .filter_map(scalar_text)
                .collect::<Vec<_>>()
                .join("\n"),
            other => scalar_text(other).unwrap_or_default(),
        };
        let files = |field: &str| -> Result<Vec<DvcFile>, DvcError> {
            match &stage[field] {
                Yaml::Array(entries) => entries
                    .iter()
                    .map(|entry| parse_file(entry, path))
                    .collect(),
                Yaml::BadValue | Yaml::Null => Ok(Vec::new()),
                _ => Err(format(&format!("stage '{name}': '{field}' is not a list"))),
            }
        };
        let deps = files("deps")?;
        let outs = files("outs")?;
        let mut params = BTreeMap::new();
        if let Some(files) = stage["params"].as_hash() {
            for (file, values) in files {
                let file = scalar_text(file).unwrap_or_default();
                let prefix = if file == "params.yaml" {
                    String::new()
                } else {
                    format!("{file}:")
                };
                let mut flat = BTreeMap::new();
                flatten_params("", values, &mut flat);
                params.extend(
                    flat.into_iter()
                        .map(|(key, value)| (format!("{prefix}{key}"), value)),
                );
            }
        }
        parsed.push(DvcStage {
            name,
            cmd,
            deps,
            outs,
            params,
        });
    }
    Ok(parsed)
}

/// What an import did.
#[derive(Debug, Default)]
pub struct DvcImportSummary {
    /// Stages imported: (stage, run id).
    pub runs: Vec<(String, String)>,
    /// Stages skipped: imported before with the same command and hashes.
    pub skipped: Vec<String>,
    /// INPUT and OUTPUT events recorded.
    pub events: usize,
}

fn artifact_of(file: &DvcFile, repository: &Path) -> NewArtifact {
    let directory = file.digest.ends_with(".dir");
    let mut properties = BTreeMap::from([("hash".to_string(), file.hash.clone())]);
    if let Some(size) = file.size {
        properties.insert("size".to_string(), size.to_string());
    }
    if let Some(nfiles) = file.nfiles {
        properties.insert("nfiles".to_string(), nfiles.to_string());
    }
    let uri = if file.path.contains("://") {
        file.path.clone()
    } else {
        repository.join(&file.path).display().to_string()
    };
    NewArtifact {
        artifact_type: if directory { "directory" } else { "file" }.to_string(),
        name: file.path.clone(),
        uri,
        digest: file.digest.clone(),
        properties,
    }
}

/// Imports the stages of the lock file at `path` into `experiment`
/// (created if missing).
pub async fn import_lock(
    engine: &Engine,
    path: &Path,
    experiment: &str,
) -> Result<DvcImportSummary, DvcError> {
    let io = |source| DvcError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::metadata(path).map_err(io)?.len();
    if bytes > MAX_LOCK_BYTES {
        return Err(DvcError::TooLarge {
            path: path.to_path_buf(),
            bytes,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let stages = parse_lock(&text, path)?;
    let absolute = std::path::absolute(path).map_err(io)?;
    let repository = absolute.parent().unwrap_or(Path::new("/")).to_path_buf();
    let experiment_id = match engine.experiment_by_name(experiment) {
        Ok(found) => found.experiment_id,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            engine
                .create_experiment(NewExperiment {
                    name: experiment.to_string(),
                    ..NewExperiment::default()
                })
                .await?
        }
        Err(error) => return Err(error.into()),
    };
    let imported: std::collections::HashSet<String> = engine
        .runs_of_experiment(experiment_id, ViewType::All)
        .into_iter()
        .filter_map(|run| run.tags.get(STAGE_DIGEST_TAG).map(str::to_string))
        .collect();
    let principal = Principal::unrestricted();
    let mut summary = DvcImportSummary::default();
    for stage in stages {
        let digest = stage.digest();
        if imported.contains(&digest) {
            summary.skipped.push(stage.name);
            continue;
        }
        let now = now_millis();
        let run = engine
            .create_run(NewRun {
                experiment_id,
                run_name: Some(stage.name.clone()),
                user_id: "dvc".to_string(),
                start_time: now,
                params: stage.params.clone().into_iter().collect(),
                tags: vec![
                    (CMD_TAG.to_string(), stage.cmd.clone()),
                    (STAGE_DIGEST_TAG.to_string(), digest),
                    (LOCK_TAG.to_string(), absolute.display().to_string()),
                ],
            })
            .await?;
        for (kind, files) in [
            (EventKind::Input, &stage.deps),
            (EventKind::Output, &stage.outs),
        ] {
            if files.is_empty() {
                continue;
            }
            let references = files
                .iter()
                .map(|file| ArtifactRef::Described(artifact_of(file, &repository)))
                .collect();
            summary.events += engine
                .record_lineage_events(&principal, run.run_id, kind, references, None)
                .await?
                .len();
        }
        engine
            .update_run(
                run.run_id,
                RunUpdate {
                    status: Some(RunStatus::Finished),
                    end_time: Some(now_millis()),
                    run_name: None,
                },
            )
            .await?;
        summary.runs.push((stage.name, run.run_id.to_string()));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"schema: '2.0'
stages:
  prepare:
    cmd: python src/prepare.py data/data.xml
    deps:
    - path: data/data.xml
      hash: md5
      md5: a304afb96060aad90176268345e10355
      size: 37891850
    params:
      params.yaml:
        prepare.seed: 20170428
        prepare.split: 0.2
        prepare.flags:
          shuffle: true
          langs: [en, fr]
      other.yaml:
        x: null
    outs:
    - path: data/prepared
      hash: md5
      md5: 153aad06d376b6595932470e459ef42a.dir
      size: 8437363
      nfiles: 2
  upload:
    cmd:
    - aws s3 cp model.pkl s3://bucket/model.pkl
    - echo done
    deps:
    - path: s3://bucket/raw.csv
      etag: '"0x8D9"'
"#;

    #[test]
    fn stages_deps_outs_and_params_are_read() {
        let stages = parse_lock(LOCK, Path::new("dvc.lock")).unwrap();
        assert_eq!(stages.len(), 2);
        let prepare = &stages[0];
        assert_eq!(prepare.name, "prepare");
        assert_eq!(prepare.cmd, "python src/prepare.py data/data.xml");
        assert_eq!(prepare.deps[0].digest, "a304afb96060aad90176268345e10355");
        assert_eq!(prepare.deps[0].size, Some(37_891_850));
        assert_eq!(prepare.outs[0].nfiles, Some(2));
        assert_eq!(prepare.params["prepare.seed"], "20170428");
        assert_eq!(prepare.params["prepare.split"], "0.2");
        assert_eq!(prepare.params["prepare.flags.shuffle"], "True");
        assert_eq!(prepare.params["prepare.flags.langs.1"], "fr");
        assert_eq!(prepare.params["other.yaml:x"], "None");
        let artifact = artifact_of(&prepare.outs[0], Path::new("/repo"));
        assert_eq!(artifact.artifact_type, "directory");
        assert_eq!(artifact.uri, "/repo/data/prepared");
        assert_eq!(artifact.name, "data/prepared");
        let upload = &stages[1];
        assert_eq!(
            upload.cmd,
            "aws s3 cp model.pkl s3://bucket/model.pkl\necho done"
        );
        assert_eq!(upload.deps[0].hash, "etag");
        assert_eq!(upload.deps[0].digest, "\"0x8D9\"");
        assert_eq!(
            artifact_of(&upload.deps[0], Path::new("/repo")).uri,
            "s3://bucket/raw.csv"
        );
        assert!(upload.outs.is_empty());
        assert_ne!(prepare.digest(), upload.digest());
    }

    #[test]
    fn other_files_are_refused_with_the_reason() {
        let path = Path::new("x.lock");
        for (text, reason) in [
            ("", "empty"),
            ("stages: {}", "schema: 2.0"),
            ("schema: '3.0'\nstages: {}", "schema '3.0'"),
            ("schema: '2.0'", "stages"),
            ("schema: '2.0'\nstages:\n  a:\n    deps: 3", "not a list"),
            (
                "schema: '2.0'\nstages:\n  a:\n    deps:\n    - md5: x",
                "without a path",
            ),
            (
                "schema: '2.0'\nstages:\n  a:\n    outs:\n    - path: p",
                "no md5",
            ),
            ("schema: [unclosed", "not YAML"),
        ] {
            let error = parse_lock(text, path).unwrap_err().to_string();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }
}
