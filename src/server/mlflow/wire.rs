//! MLflow's JSON shapes (protobuf JSON as MLflow's server writes it): int64
//! fields as numbers, doubles with `"NaN"`/`"Infinity"`/`"-Infinity"`, and
//! empty repeated fields left out. Requests accept int64 fields as numbers
//! or strings, as protobuf's JSON parser does.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::model::float_json;
use crate::model::{Dataset, DatasetInput, Experiment, KeySummary, Run};

/// A key-value pair (`ExperimentTag`, `RunTag`, `Param`, `InputTag`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyValue {
    /// The key.
    #[serde(default)]
    pub key: String,
    /// The value.
    #[serde(default)]
    pub value: String,
}

fn pairs<K: AsRef<str>, V: AsRef<str>>(entries: impl IntoIterator<Item = (K, V)>) -> Vec<KeyValue> {
    entries
        .into_iter()
        .map(|(key, value)| KeyValue {
            key: key.as_ref().to_string(),
            value: value.as_ref().to_string(),
        })
        .collect()
}

/// `Experiment`.
#[derive(Serialize)]
pub struct ExperimentJson {
    experiment_id: String,
    name: String,
    artifact_location: String,
    lifecycle_stage: &'static str,
    last_update_time: i64,
    creation_time: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<KeyValue>,
}

impl From<&Experiment> for ExperimentJson {
    fn from(experiment: &Experiment) -> Self {
        ExperimentJson {
            experiment_id: experiment.experiment_id.to_string(),
            name: experiment.name.clone(),
            artifact_location: experiment.artifact_location.clone(),
            lifecycle_stage: experiment.lifecycle_stage.as_str(),
            last_update_time: experiment.last_update_time,
            creation_time: experiment.creation_time,
            tags: pairs(&experiment.tags),
        }
    }
}

/// `RunInfo`.
#[derive(Serialize)]
pub struct RunInfoJson {
    run_id: String,
    run_uuid: String,
    run_name: String,
    experiment_id: String,
    user_id: String,
    status: &'static str,
    start_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_time: Option<i64>,
    artifact_uri: String,
    lifecycle_stage: &'static str,
}

impl From<&Run> for RunInfoJson {
    fn from(run: &Run) -> Self {
        RunInfoJson {
            run_id: run.run_id.to_string(),
            run_uuid: run.run_id.to_string(),
            run_name: run.run_name.clone(),
            experiment_id: run.experiment_id.to_string(),
            user_id: run.user_id.clone(),
            status: run.status.as_str(),
            start_time: run.start_time,
            end_time: run.end_time,
            artifact_uri: run.artifact_uri.clone(),
            lifecycle_stage: run.lifecycle_stage.as_str(),
        }
    }
}

/// `Metric`: one point (with `run_id` in bulk reads).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct MetricJson {
    /// The key.
    pub key: String,
    /// The value (NaN and infinities as strings).
    #[serde(serialize_with = "float_json::serialize")]
    pub value: f64,
    /// Wall-clock time, ms since the epoch.
    pub timestamp: i64,
    /// The step.
    pub step: i64,
    /// The run, in multi-run reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// `text` as a JSON string literal (quoted and escaped).
pub fn json_string(text: &str) -> Vec<u8> {
    // Serialising a string to JSON cannot fail.
    serde_json::to_vec(text).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// Appends one `Metric` object (`{"key", "value", "timestamp", "step"[,
/// "run_id"]}`) to `out`, written straight from the point: the hot loop of
/// metric history answers. `key_json` and `run_id_json` are JSON string
/// literals ([`json_string`]).
pub fn write_metric(
    out: &mut Vec<u8>,
    key_json: &[u8],
    value: f64,
    timestamp: i64,
    step: i64,
    run_id_json: Option<&[u8]>,
) {
    let mut integers = itoa::Buffer::new();
    out.extend_from_slice(b"{\"key\":");
    out.extend_from_slice(key_json);
    out.extend_from_slice(b",\"value\":");
    match float_json::non_finite_name(value) {
        Some(name) => {
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.push(b'"');
        }
        None => {
            let mut floats = ryu::Buffer::new();
            out.extend_from_slice(floats.format_finite(value).as_bytes());
        }
    }
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(integers.format(timestamp).as_bytes());
    out.extend_from_slice(b",\"step\":");
    out.extend_from_slice(integers.format(step).as_bytes());
    if let Some(run_id_json) = run_id_json {
        out.extend_from_slice(b",\"run_id\":");
        out.extend_from_slice(run_id_json);
    }
    out.push(b'}');
}

/// `Dataset`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DatasetJson {
    #[serde(default)]
    name: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    source_type: String,
    #[serde(default)]
    source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
}

/// `DatasetInput`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct DatasetInputJson {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<KeyValue>,
    #[serde(default)]
    dataset: Option<DatasetJson>,
}

impl DatasetInputJson {
    /// The model's form; `None` when the dataset is missing.
    pub fn into_model(self) -> Option<DatasetInput> {
        let dataset = self.dataset?;
        Some(DatasetInput {
            dataset: Dataset {
                name: dataset.name,
                digest: dataset.digest,
                source_type: dataset.source_type,
                source: dataset.source,
                schema: dataset.schema.filter(|schema| !schema.is_empty()),
                profile: dataset.profile.filter(|profile| !profile.is_empty()),
            },
            tags: self
                .tags
                .into_iter()
                .map(|tag| (tag.key, tag.value))
                .collect(),
        })
    }
}

impl From<&DatasetInput> for DatasetInputJson {
    fn from(input: &DatasetInput) -> Self {
        DatasetInputJson {
            tags: pairs(&input.tags),
            dataset: Some(DatasetJson {
                name: input.dataset.name.clone(),
                digest: input.dataset.digest.clone(),
                source_type: input.dataset.source_type.clone(),
                source: input.dataset.source.clone(),
                schema: input.dataset.schema.clone(),
                profile: input.dataset.profile.clone(),
            }),
        }
    }
}

#[derive(Serialize)]
struct RunDataJson {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    metrics: Vec<MetricJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    params: Vec<KeyValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<KeyValue>,
}

#[derive(Serialize)]
struct RunInputsJson {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dataset_inputs: Vec<DatasetInputJson>,
}

/// `Run`: info, data (latest metrics, params, tags) and inputs.
#[derive(Serialize)]
pub struct RunJson {
    info: RunInfoJson,
    data: RunDataJson,
    inputs: RunInputsJson,
}

impl RunJson {
    /// A run with the latest point of each of its metric keys.
    pub fn new(run: &Run, summaries: &[(String, KeySummary)]) -> Self {
        RunJson {
            info: RunInfoJson::from(run),
            data: RunDataJson {
                metrics: summaries
                    .iter()
                    .map(|(key, summary)| MetricJson {
                        key: key.clone(),
                        value: summary.latest_value,
                        timestamp: summary.latest_timestamp,
                        step: summary.latest_step,
                        run_id: None,
                    })
                    .collect(),
                params: pairs(&run.params),
                tags: pairs(&run.tags),
            },
            inputs: RunInputsJson {
                dataset_inputs: run.inputs.iter().map(DatasetInputJson::from).collect(),
            },
        }
    }
}

struct LenientI64;

impl Visitor<'_> for LenientI64 {
    type Value = i64;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an integer, as a number or a string")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<i64, E> {
        Ok(value)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<i64, E> {
        i64::try_from(value).map_err(|_| E::custom(format!("{value} is out of range for int64")))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<i64, E> {
        if value.fract() == 0.0 && value.abs() < 9.2e18 {
            Ok(value as i64)
        } else {
            Err(E::custom(format!("{value} is not an integer")))
        }
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<i64, E> {
        value
            .trim()
            .parse::<i64>()
            .map_err(|_| E::custom(format!("'{value}' is not an integer")))
    }
}

/// Deserializes an optional int64 given as a number or a string.
pub fn optional_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    struct Optional;
    impl<'de> Visitor<'de> for Optional {
        type Value = Option<i64>;
        fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("an integer or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Option<i64>, D::Error> {
            inner.deserialize_any(LenientI64).map(Some)
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Option<i64>, E> {
            LenientI64.visit_i64(value).map(Some)
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Option<i64>, E> {
            LenientI64.visit_u64(value).map(Some)
        }
        fn visit_f64<E: de::Error>(self, value: f64) -> Result<Option<i64>, E> {
            LenientI64.visit_f64(value).map(Some)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<Option<i64>, E> {
            LenientI64.visit_str(value).map(Some)
        }
    }
    deserializer.deserialize_option(Optional)
}

/// Names of MLflow's `RunStatus` values, by number (1-based).
pub const RUN_STATUS_NAMES: [&str; 5] = ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];
/// Names of MLflow's `ViewType` values, by number (1-based).
pub const VIEW_TYPE_NAMES: [&str; 3] = ["ACTIVE_ONLY", "DELETED_ONLY", "ALL"];

fn enum_name<'de, D: Deserializer<'de>>(
    deserializer: D,
    names: &'static [&'static str],
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Name(String),
        Number(i64),
    }
    match Option::<NameOrNumber>::deserialize(deserializer)? {
        None => Ok(None),
        Some(NameOrNumber::Name(name)) => Ok(Some(name)),
        Some(NameOrNumber::Number(number)) => usize::try_from(number)
            .ok()
            .and_then(|number| number.checked_sub(1))
            .and_then(|index| names.get(index))
            .map(|name| Some(name.to_string()))
            .ok_or_else(|| de::Error::custom(format!("{number} is not a valid enum value"))),
    }
}

/// Deserializes a `RunStatus` given by name or by number, as protobuf's
/// JSON parser accepts.
pub fn run_status<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    enum_name(deserializer, &RUN_STATUS_NAMES)
}

/// Deserializes a `ViewType` given by name or by number.
pub fn view_type<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    enum_name(deserializer, &VIEW_TYPE_NAMES)
}

/// Deserializes a list of strings that a query string may give as one
/// value or several, and JSON as an array.
pub fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::One(value)) => vec![value],
        Some(OneOrMany::Many(values)) => values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Request {
        #[serde(default, deserialize_with = "optional_i64")]
        start_time: Option<i64>,
        #[serde(default, deserialize_with = "string_list")]
        run_ids: Vec<String>,
    }

    #[test]
    fn int64_fields_accept_numbers_and_strings() {
        let parse = |text: &str| serde_json::from_str::<Request>(text).unwrap().start_time;
        assert_eq!(parse(r#"{"start_time": 17}"#), Some(17));
        assert_eq!(parse(r#"{"start_time": "17"}"#), Some(17));
        assert_eq!(parse(r#"{"start_time": null}"#), None);
        assert_eq!(parse("{}"), None);
        assert!(serde_json::from_str::<Request>(r#"{"start_time": "x"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"start_time": 1.5}"#).is_err());
    }

    #[test]
    fn enums_by_name_or_number() {
        #[derive(Deserialize)]
        struct Update {
            #[serde(default, deserialize_with = "run_status")]
            status: Option<String>,
        }
        let parse = |text: &str| serde_json::from_str::<Update>(text).map(|update| update.status);
        assert_eq!(
            parse(r#"{"status": 3}"#).unwrap().as_deref(),
            Some("FINISHED")
        );
        assert_eq!(
            parse(r#"{"status": "KILLED"}"#).unwrap().as_deref(),
            Some("KILLED")
        );
        assert_eq!(parse("{}").unwrap(), None);
        assert!(parse(r#"{"status": 9}"#).is_err());
    }

    #[test]
    fn query_strings_give_lists_and_numbers() {
        let request: Request =
            serde_html_form::from_str("run_ids=a&run_ids=b&start_time=5").unwrap();
        assert_eq!(request.run_ids, ["a", "b"]);
        assert_eq!(request.start_time, Some(5));
        let single: Request = serde_html_form::from_str("run_ids=a").unwrap();
        assert_eq!(single.run_ids, ["a"]);
    }

    #[test]
    fn metrics_written_by_hand_match_serde() {
        for (value, run_id) in [
            (0.1, None),
            (f64::NAN, Some("r1")),
            (f64::NEG_INFINITY, None),
            (-1e300, Some("r\"2")),
            (3.0, None),
        ] {
            let mut out = Vec::new();
            let run_json = run_id.map(json_string);
            write_metric(
                &mut out,
                &json_string("a/\"b"),
                value,
                -5,
                7,
                run_json.as_deref(),
            );
            let expected = MetricJson {
                key: "a/\"b".into(),
                value,
                timestamp: -5,
                step: 7,
                run_id: run_id.map(str::to_string),
            };
            let written: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(written, serde_json::to_value(&expected).unwrap());
        }
    }
}
