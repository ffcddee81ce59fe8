//! Lineage, after ML Metadata's model kept small: artifacts (datasets,
//! models, checkpoints, any typed thing with a uri and a digest) and the
//! events that tie them to runs (a run is the execution): an INPUT event
//! says a run consumed an artifact, an OUTPUT event that it produced one,
//! at a step when it matters (a checkpoint).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::RunId;
use super::validation::ValidationError;

/// The type MLflow datasets (`log-inputs`) get as artifacts.
pub const DATASET_TYPE: &str = "dataset";

/// Longest artifact type, name or digest, in characters.
pub const MAX_ARTIFACT_FIELD_LENGTH: usize = 500;
/// Longest artifact uri, in characters.
pub const MAX_ARTIFACT_URI_LENGTH: usize = 8_000;
/// Most properties of one artifact.
pub const MAX_ARTIFACT_PROPERTIES: usize = 100;

/// An artifact's id: a number the catalog assigns, written as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ArtifactId(pub u64);

impl fmt::Display for ArtifactId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.0)
    }
}

impl FromStr for ArtifactId {
    type Err = ValidationError;
    fn from_str(text: &str) -> Result<Self, ValidationError> {
        text.parse::<u64>()
            .map(ArtifactId)
            .map_err(|_| ValidationError::InvalidField {
                field: "artifact_id",
                reason: format!("'{text}' is not an artifact id (a number)"),
            })
    }
}

/// A typed thing runs consume or produce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Its id.
    pub artifact_id: ArtifactId,
    /// `dataset`, `model`, `checkpoint`, or any string.
    pub artifact_type: String,
    /// Its name (the uri when none was given).
    pub name: String,
    /// Where it lives.
    pub uri: String,
    /// A fingerprint of its content (md5, etag, MLflow's dataset digest).
    pub digest: String,
    /// Free-form properties.
    pub properties: BTreeMap<String, String>,
    /// When it was first recorded, ms since the epoch.
    pub creation_time: i64,
}

/// Whether a run consumed or produced an artifact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventKind {
    /// The run consumed the artifact.
    Input,
    /// The run produced the artifact.
    Output,
}

impl EventKind {
    /// `INPUT` or `OUTPUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Input => "INPUT",
            EventKind::Output => "OUTPUT",
        }
    }
}

/// A run consuming or producing an artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageEvent {
    /// The artifact.
    pub artifact_id: ArtifactId,
    /// The run.
    pub run_id: RunId,
    /// Input or output.
    pub kind: EventKind,
    /// The step it happened at, when it matters (a checkpoint's step).
    pub step: Option<i64>,
    /// When, ms since the epoch.
    pub time: i64,
}

/// What identifies an artifact when it is described rather than named by
/// id: the same type, name and digest is the same artifact.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactIdentity {
    /// Its type.
    pub artifact_type: String,
    /// Its name.
    pub name: String,
    /// Its digest.
    pub digest: String,
}

impl Artifact {
    /// Its identity.
    pub fn identity(&self) -> ArtifactIdentity {
        ArtifactIdentity {
            artifact_type: self.artifact_type.clone(),
            name: self.name.clone(),
            digest: self.digest.clone(),
        }
    }
}

/// An artifact described by a client (before it has an id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewArtifact {
    /// Its type (required).
    pub artifact_type: String,
    /// Its name; the uri when empty.
    pub name: String,
    /// Where it lives (required).
    pub uri: String,
    /// A fingerprint of its content.
    pub digest: String,
    /// Free-form properties.
    pub properties: BTreeMap<String, String>,
}

impl NewArtifact {
    /// Checks the fields and fills the name from the uri.
    pub fn validated(mut self) -> Result<NewArtifact, ValidationError> {
        let invalid =
            |field: &'static str, reason: String| ValidationError::InvalidField { field, reason };
        if self.artifact_type.trim().is_empty() {
            return Err(invalid("type", "missing value".to_string()));
        }
        if self.uri.is_empty() {
            return Err(invalid("uri", "missing value".to_string()));
        }
        if self.name.is_empty() {
            self.name = self.uri.clone();
        }
        let limited = [
            ("type", &self.artifact_type, MAX_ARTIFACT_FIELD_LENGTH),
            ("name", &self.name, MAX_ARTIFACT_URI_LENGTH),
            ("digest", &self.digest, MAX_ARTIFACT_FIELD_LENGTH),
            ("uri", &self.uri, MAX_ARTIFACT_URI_LENGTH),
        ];
        for (field, value, limit) in limited {
            let length = value.chars().count();
            if length > limit {
                return Err(invalid(
                    field,
                    format!("{length} characters, more than the limit of {limit}"),
                ));
            }
        }
        if self.properties.len() > MAX_ARTIFACT_PROPERTIES {
            return Err(invalid(
                "properties",
                format!(
                    "{} properties, more than the limit of {MAX_ARTIFACT_PROPERTIES}",
                    self.properties.len()
                ),
            ));
        }
        for (key, value) in &self.properties {
            if key.chars().count() > MAX_ARTIFACT_FIELD_LENGTH
                || value.chars().count() > MAX_ARTIFACT_URI_LENGTH
            {
                return Err(invalid(
                    "properties",
                    format!("property '{key:.40}' is longer than allowed"),
                ));
            }
        }
        Ok(self)
    }

    /// Its identity.
    pub fn identity(&self) -> ArtifactIdentity {
        ArtifactIdentity {
            artifact_type: self.artifact_type.clone(),
            name: self.name.clone(),
            digest: self.digest.clone(),
        }
    }

    /// The artifact it describes, once given an id and a creation time.
    pub fn into_artifact(self, artifact_id: ArtifactId, creation_time: i64) -> Artifact {
        Artifact {
            artifact_id,
            artifact_type: self.artifact_type,
            name: self.name,
            uri: self.uri,
            digest: self.digest,
            properties: self.properties,
            creation_time,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_artifact_needs_a_type_and_a_uri_and_is_named_by_its_uri() {
        let described = NewArtifact {
            artifact_type: "model".into(),
            uri: "s3://b/m".into(),
            ..NewArtifact::default()
        };
        assert_eq!(described.clone().validated().unwrap().name, "s3://b/m");
        let untyped = NewArtifact {
            artifact_type: " ".into(),
            ..described.clone()
        };
        assert!(untyped.validated().is_err());
        let nowhere = NewArtifact {
            uri: String::new(),
            ..described
        };
        assert!(nowhere.validated().is_err());
        assert!("x".parse::<ArtifactId>().is_err());
        assert_eq!("42".parse::<ArtifactId>().unwrap(), ArtifactId(42));
    }
}
