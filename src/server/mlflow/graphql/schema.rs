//! The object types of MLflow's GraphQL schema (`mlflow/server/graphql/`:
//! generated from the tracking protos, plus the run's `experiment` and
//! `modelVersions` and the metric value that is null for NaN). Each
//! GraphQL field `fooBar` reads the REST answer's JSON member `foo_bar`
//! ([`snake_case`]).

/// What a field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `String`.
    Str,
    /// `Float` (NaN and infinities are null, as MLflow's metric value).
    Float,
    /// `Boolean`.
    Bool,
    /// `LongString`: a 64-bit integer written as a string.
    Long,
    /// An enum, written as its name.
    Enum,
    /// `[String]`.
    StrList,
    /// An object of the named type.
    Object(&'static str),
    /// A list of objects of the named type.
    ObjectList(&'static str),
}

use Kind::{Bool, Enum, Float, Long, Object, ObjectList, Str, StrList};

/// An object type: its name and fields.
pub struct ObjectType {
    /// The GraphQL type name (`__typename`).
    pub name: &'static str,
    /// Fields by GraphQL name.
    pub fields: &'static [(&'static str, Kind)],
}

/// Deepest selection nesting accepted (MLflow's limit).
pub const MAX_SELECTION_DEPTH: usize = 10;
/// Most field selections in one request (MLflow's limit).
pub const MAX_SELECTIONS: usize = 1000;

const KEY_VALUE: &[(&str, Kind)] = &[("key", Str), ("value", Str)];

/// Every object type the MLflow UI's queries can reach.
pub const TYPES: &[ObjectType] = &[
    ObjectType {
        name: "ApiError",
        fields: &[
            ("code", Str),
            ("message", Str),
            ("helpUrl", Str),
            ("traceId", Str),
            ("errorDetails", ObjectList("ErrorDetail")),
        ],
    },
    ObjectType {
        name: "ErrorDetail",
        fields: &[("field", Str), ("message", Str)],
    },
    ObjectType {
        name: "MlflowGetExperimentResponse",
        fields: &[
            ("experiment", Object("MlflowExperiment")),
            ("apiError", Object("ApiError")),
        ],
    },
    ObjectType {
        name: "MlflowExperiment",
        fields: &[
            ("experimentId", Str),
            ("name", Str),
            ("artifactLocation", Str),
            ("lifecycleStage", Str),
            ("lastUpdateTime", Long),
            ("creationTime", Long),
            ("tags", ObjectList("MlflowExperimentTag")),
            ("effectiveTraceArchivalRetention", Str),
            ("workspace", Str),
        ],
    },
    ObjectType {
        name: "MlflowExperimentTag",
        fields: KEY_VALUE,
    },
    ObjectType {
        name: "MlflowGetRunResponse",
        fields: &[
            ("run", Object("MlflowRunExtension")),
            ("apiError", Object("ApiError")),
        ],
    },
    ObjectType {
        name: "MlflowSearchRunsResponse",
        fields: &[
            ("runs", ObjectList("MlflowRunExtension")),
            ("nextPageToken", Str),
            ("apiError", Object("ApiError")),
        ],
    },
    ObjectType {
        name: "MlflowRunExtension",
        fields: &[
            ("info", Object("MlflowRunInfo")),
            ("data", Object("MlflowRunData")),
            ("inputs", Object("MlflowRunInputs")),
            ("outputs", Object("MlflowRunOutputs")),
            ("experiment", Object("MlflowExperiment")),
            ("modelVersions", ObjectList("MlflowModelVersion")),
        ],
    },
    ObjectType {
        name: "MlflowRunInfo",
        fields: &[
            ("runId", Str),
            ("runUuid", Str),
            ("runName", Str),
            ("experimentId", Str),
            ("userId", Str),
            ("status", Enum),
            ("startTime", Long),
            ("endTime", Long),
            ("artifactUri", Str),
            ("lifecycleStage", Str),
        ],
    },
    ObjectType {
        name: "MlflowRunData",
        fields: &[
            ("metrics", ObjectList("MlflowMetricExtension")),
            ("params", ObjectList("MlflowParam")),
            ("tags", ObjectList("MlflowRunTag")),
        ],
    },
    ObjectType {
        name: "MlflowMetricExtension",
        fields: &[
            ("key", Str),
            ("value", Float),
            ("timestamp", Long),
            ("step", Long),
            ("datasetName", Str),
            ("datasetDigest", Str),
            ("modelId", Str),
            ("runId", Str),
        ],
    },
    ObjectType {
        name: "MlflowParam",
        fields: KEY_VALUE,
    },
    ObjectType {
        name: "MlflowRunTag",
        fields: KEY_VALUE,
    },
    ObjectType {
        name: "MlflowRunInputs",
        fields: &[
            ("datasetInputs", ObjectList("MlflowDatasetInput")),
            ("modelInputs", ObjectList("MlflowModelInput")),
        ],
    },
    ObjectType {
        name: "MlflowDatasetInput",
        fields: &[
            ("tags", ObjectList("MlflowInputTag")),
            ("dataset", Object("MlflowDataset")),
        ],
    },
    ObjectType {
        name: "MlflowInputTag",
        fields: KEY_VALUE,
    },
    ObjectType {
        name: "MlflowDataset",
        fields: &[
            ("name", Str),
            ("digest", Str),
            ("sourceType", Str),
            ("source", Str),
            ("schema", Str),
            ("profile", Str),
        ],
    },
    ObjectType {
        name: "MlflowModelInput",
        fields: &[("modelId", Str)],
    },
    ObjectType {
        name: "MlflowRunOutputs",
        fields: &[("modelOutputs", ObjectList("MlflowModelOutput"))],
    },
    ObjectType {
        name: "MlflowModelOutput",
        fields: &[("modelId", Str), ("step", Long)],
    },
    ObjectType {
        name: "MlflowModelVersion",
        fields: &[
            ("name", Str),
            ("version", Str),
            ("creationTimestamp", Long),
            ("lastUpdatedTimestamp", Long),
            ("userId", Str),
            ("currentStage", Str),
            ("description", Str),
            ("source", Str),
            ("runId", Str),
            ("status", Enum),
            ("statusMessage", Str),
            ("tags", ObjectList("MlflowModelVersionTag")),
            ("runLink", Str),
            ("aliases", StrList),
            ("modelId", Str),
            ("modelParams", ObjectList("MlflowModelParam")),
            ("modelMetrics", ObjectList("MlflowModelMetric")),
            (
                "deploymentJobState",
                Object("MlflowModelVersionDeploymentJobState"),
            ),
        ],
    },
    ObjectType {
        name: "MlflowModelVersionTag",
        fields: KEY_VALUE,
    },
    ObjectType {
        name: "MlflowModelParam",
        fields: &[("name", Str), ("value", Str)],
    },
    ObjectType {
        name: "MlflowModelMetric",
        fields: &[
            ("key", Str),
            ("value", Float),
            ("timestamp", Long),
            ("step", Long),
            ("datasetName", Str),
            ("datasetDigest", Str),
            ("modelId", Str),
            ("runId", Str),
        ],
    },
    ObjectType {
        name: "MlflowModelVersionDeploymentJobState",
        fields: &[
            ("jobId", Str),
            ("runId", Str),
            ("jobState", Enum),
            ("runState", Enum),
            ("currentTaskName", Str),
        ],
    },
    ObjectType {
        name: "MlflowSearchModelVersionsResponse",
        fields: &[
            ("modelVersions", ObjectList("MlflowModelVersion")),
            ("nextPageToken", Str),
            ("apiError", Object("ApiError")),
        ],
    },
    ObjectType {
        name: "MlflowDatasetSummary",
        fields: &[
            ("experimentId", Str),
            ("name", Str),
            ("digest", Str),
            ("context", Str),
        ],
    },
    ObjectType {
        name: "MlflowSearchDatasetsResponse",
        fields: &[
            ("datasetSummaries", ObjectList("MlflowDatasetSummary")),
            ("apiError", Object("ApiError")),
        ],
    },
    ObjectType {
        name: "MlflowMetricWithRunId",
        fields: &[
            ("key", Str),
            ("value", Float),
            ("timestamp", Long),
            ("step", Long),
            ("runId", Str),
        ],
    },
    ObjectType {
        name: "MlflowGetMetricHistoryBulkIntervalResponse",
        fields: &[
            ("metrics", ObjectList("MlflowMetricWithRunId")),
            ("apiError", Object("ApiError")),
        ],
    },
    ObjectType {
        name: "MlflowFileInfo",
        fields: &[("path", Str), ("isDir", Bool), ("fileSize", Long)],
    },
    ObjectType {
        name: "MlflowListArtifactsResponse",
        fields: &[
            ("rootUri", Str),
            ("files", ObjectList("MlflowFileInfo")),
            ("nextPageToken", Str),
            ("apiError", Object("ApiError")),
        ],
    },
    ObjectType {
        name: "Test",
        fields: &[("output", Str)],
    },
    ObjectType {
        name: "TestMutation",
        fields: &[("output", Str)],
    },
];

/// The named object type.
pub fn object_type(name: &str) -> Option<&'static ObjectType> {
    TYPES.iter().find(|object| object.name == name)
}

impl ObjectType {
    /// The kind of field `name`, if the type has it.
    pub fn field(&self, name: &str) -> Option<Kind> {
        self.fields
            .iter()
            .find(|(field, _)| *field == name)
            .map(|&(_, kind)| kind)
    }
}

/// `fooBar` -> `foo_bar`: the JSON member a GraphQL field reads.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for character in name.chars() {
        if character.is_ascii_uppercase() {
            out.push('_');
            out.push(character.to_ascii_lowercase());
        } else {
            out.push(character);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_referenced_type_exists() {
        for object in TYPES {
            for &(name, kind) in object.fields {
                if let Object(target) | ObjectList(target) = kind {
                    assert!(
                        object_type(target).is_some(),
                        "{}.{name} -> {target}",
                        object.name
                    );
                }
            }
        }
        assert_eq!(
            snake_case("effectiveTraceArchivalRetention"),
            "effective_trace_archival_retention"
        );
    }
}
