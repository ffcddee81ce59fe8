//! MLflow's naming and size rules for metric, param and tag keys and values,
//! and the errors they produce. Every name that reaches the catalog, the WAL
//! or a file path has been through these checks.

use thiserror::Error;

use super::ids::truncate_for_message;

/// Longest key (metric, param or tag name) MLflow accepts, in characters.
pub const MAX_KEY_LENGTH: usize = 250;
/// Longest key in bytes of UTF-8 (checked first, before characters are
/// counted).
pub const MAX_KEY_BYTES: usize = 500;
/// Longest param value.
pub const MAX_PARAM_VALUE_LENGTH: usize = 6000;
/// Longest tag value.
pub const MAX_TAG_VALUE_LENGTH: usize = 8000;
/// Longest experiment name.
pub const MAX_EXPERIMENT_NAME_LENGTH: usize = 500;

/// Longest dataset name.
pub const MAX_DATASET_NAME_LENGTH: usize = 500;
/// Longest dataset digest.
pub const MAX_DATASET_DIGEST_LENGTH: usize = 36;
/// Longest dataset source document.
pub const MAX_DATASET_SOURCE_LENGTH: usize = 65535;
/// Longest dataset schema document.
pub const MAX_DATASET_SCHEMA_LENGTH: usize = 1_048_575;
/// Longest dataset profile document.
pub const MAX_DATASET_PROFILE_LENGTH: usize = 16_777_215;
/// Longest key of a dataset input tag.
pub const MAX_INPUT_TAG_KEY_LENGTH: usize = 255;
/// Longest value of a dataset input tag.
pub const MAX_INPUT_TAG_VALUE_LENGTH: usize = 500;

/// What a key names, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A metric key.
    Metric,
    /// A run param key.
    Param,
    /// A run or experiment tag key.
    Tag,
}

impl KeyKind {
    fn noun(self) -> &'static str {
        match self {
            KeyKind::Metric => "metric",
            KeyKind::Param => "param",
            KeyKind::Tag => "tag",
        }
    }
}

/// A value or name a client sent that breaks the data model's rules.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ValidationError {
    /// The run id is not 32 lower-case hex characters.
    #[error("invalid run id '{0}': expected 32 lower-case hex characters")]
    InvalidRunId(String),
    /// The experiment id is not a decimal number.
    #[error("invalid experiment id '{0}': expected a decimal number")]
    InvalidExperimentId(String),
    /// A key is empty, too long, has characters outside the allowed set, or
    /// would resolve to another name when used as a path.
    #[error("invalid {kind} name '{key}': {reason}", kind = kind.noun())]
    InvalidKey {
        /// What the key names.
        kind: KeyKind,
        /// The key (shortened).
        key: String,
        /// Why it was refused.
        reason: String,
    },
    /// A param or tag value is longer than allowed.
    #[error("{kind} '{key}' has a value of {length} characters, longer than the limit of {limit}", kind = kind.noun())]
    ValueTooLong {
        /// What the value belongs to.
        kind: KeyKind,
        /// The key of the value.
        key: String,
        /// The value's length in characters.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// Any other invalid field.
    #[error("invalid value for '{field}': {reason}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
}

impl crate::error_kind::Classify for ValidationError {
    fn kind(&self) -> crate::error_kind::ErrorKind {
        crate::error_kind::ErrorKind::InvalidParameter
    }
}

/// Checks a metric, param or tag key against MLflow's rules: non-empty, at
/// most 250 characters (and 500 bytes), only `^[/\w.\- :]*$`, and unchanged by path
/// normalisation (no `..` segments, no leading or doubled `/`).
pub fn validate_key(kind: KeyKind, key: &str) -> Result<(), ValidationError> {
    let refuse = |reason: String| ValidationError::InvalidKey {
        kind,
        key: truncate_for_message(key),
        reason,
    };
    if key.is_empty() {
        return Err(refuse("names may not be empty".to_string()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(refuse(format!(
            "{} bytes of UTF-8, longer than the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    let length = key.chars().count();
    if length > MAX_KEY_LENGTH {
        return Err(refuse(format!(
            "{length} characters, longer than the limit of {MAX_KEY_LENGTH}"
        )));
    }
    if !key.chars().all(is_allowed_key_char) {
        return Err(refuse(
            "names may only contain alphanumerics, underscores (_), dashes (-), periods (.), \
             spaces ( ), colons (:) and slashes (/)"
                .to_string(),
        ));
    }
    let normalised = posix_normpath(key);
    if normalised != key
        || normalised == "."
        || normalised.starts_with("..")
        || normalised.starts_with('/')
    {
        return Err(refuse(format!(
            "names may be treated as files, and must not resolve to other names when treated as \
             such; this name would resolve to '{normalised}'"
        )));
    }
    Ok(())
}

/// Checks a dataset input against MLflow's limits: name, digest, source
/// type and source present; every field and input tag within its length.
pub fn validate_dataset_input(input: &super::DatasetInput) -> Result<(), ValidationError> {
    let dataset = &input.dataset;
    let required = [
        ("dataset.name", &dataset.name),
        ("dataset.digest", &dataset.digest),
        ("dataset.source_type", &dataset.source_type),
        ("dataset.source", &dataset.source),
    ];
    for (field, value) in required {
        if value.is_empty() {
            return Err(ValidationError::InvalidField {
                field,
                reason: "missing value".to_string(),
            });
        }
    }
    let limited = [
        ("dataset.name", Some(&dataset.name), MAX_DATASET_NAME_LENGTH),
        (
            "dataset.digest",
            Some(&dataset.digest),
            MAX_DATASET_DIGEST_LENGTH,
        ),
        (
            "dataset.source",
            Some(&dataset.source),
            MAX_DATASET_SOURCE_LENGTH,
        ),
        (
            "dataset.schema",
            dataset.schema.as_ref(),
            MAX_DATASET_SCHEMA_LENGTH,
        ),
        (
            "dataset.profile",
            dataset.profile.as_ref(),
            MAX_DATASET_PROFILE_LENGTH,
        ),
    ];
    for (field, value, limit) in limited {
        let length = value.map_or(0, |value| value.chars().count());
        if length > limit {
            return Err(ValidationError::InvalidField {
                field,
                reason: format!("{length} characters, longer than the limit of {limit}"),
            });
        }
    }
    for (key, value) in &input.tags {
        if key.is_empty() || key.chars().count() > MAX_INPUT_TAG_KEY_LENGTH {
            return Err(ValidationError::InvalidField {
                field: "input tag key",
                reason: format!(
                    "'{}' must have 1 to {MAX_INPUT_TAG_KEY_LENGTH} characters",
                    truncate_for_message(key)
                ),
            });
        }
        if value.chars().count() > MAX_INPUT_TAG_VALUE_LENGTH {
            return Err(ValidationError::InvalidField {
                field: "input tag value",
                reason: format!(
                    "the value of '{}' is longer than the limit of {MAX_INPUT_TAG_VALUE_LENGTH}",
                    truncate_for_message(key)
                ),
            });
        }
    }
    Ok(())
}

/// Checks a param value's length.
pub fn validate_param_value(key: &str, value: &str) -> Result<(), ValidationError> {
    validate_value_length(KeyKind::Param, key, value, MAX_PARAM_VALUE_LENGTH)
}

/// Checks a tag value's length.
pub fn validate_tag_value(key: &str, value: &str) -> Result<(), ValidationError> {
    validate_value_length(KeyKind::Tag, key, value, MAX_TAG_VALUE_LENGTH)
}

/// Checks an experiment name: non-empty, not only blanks, and not too long.
pub fn validate_experiment_name(name: &str) -> Result<(), ValidationError> {
    if name.trim().is_empty() {
        return Err(ValidationError::InvalidField {
            field: "name",
            reason: "an experiment name may not be empty".to_string(),
        });
    }
    let length = name.chars().count();
    if length > MAX_EXPERIMENT_NAME_LENGTH {
        return Err(ValidationError::InvalidField {
            field: "name",
            reason: format!(
                "{length} characters, longer than the limit of {MAX_EXPERIMENT_NAME_LENGTH}"
            ),
        });
    }
    Ok(())
}

fn validate_value_length(
    kind: KeyKind,
    key: &str,
    value: &str,
    limit: usize,
) -> Result<(), ValidationError> {
    // Byte length bounds character length from above: skip counting when short.
    if value.len() <= limit {
        return Ok(());
    }
    let length = value.chars().count();
    if length > limit {
        return Err(ValidationError::ValueTooLong {
            kind,
            key: truncate_for_message(key),
            length,
            limit,
        });
    }
    Ok(())
}

fn is_allowed_key_char(character: char) -> bool {
    character.is_alphanumeric() || matches!(character, '_' | '/' | '.' | '-' | ' ' | ':')
}

/// Python's `posixpath.normpath`, which MLflow uses to refuse names that
/// would resolve to other names.
fn posix_normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let initial_slashes = if path.starts_with("//") && !path.starts_with("///") {
        2
    } else if path.starts_with('/') {
        1
    } else {
        0
    };
    let mut components: Vec<&str> = Vec::new();
    for component in path.split('/') {
        if component.is_empty() || component == "." {
            continue;
        }
        let keep = component != ".."
            || (initial_slashes == 0 && components.is_empty())
            || components.last() == Some(&"..");
        if keep {
            components.push(component);
        } else if !components.is_empty() {
            components.pop();
        }
    }
    let mut normalised = "/".repeat(initial_slashes);
    normalised.push_str(&components.join("/"));
    if normalised.is_empty() {
        ".".to_string()
    } else {
        normalised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_mlflow_style_keys() {
        for key in [
            "loss",
            "train/loss",
            "eval acc",
            "lr:group0",
            "a.b-c_d",
            "ünïcode",
            "x".repeat(250).as_str(),
            "é".repeat(250).as_str(),
        ] {
            validate_key(KeyKind::Metric, key).unwrap();
        }
    }

    #[test]
    fn refuses_keys_over_the_byte_limit_before_counting() {
        // 250 characters of 3 bytes each: within the character limit, over
        // the byte limit.
        let wide = "語".repeat(250);
        let error = validate_key(KeyKind::Metric, &wide).unwrap_err();
        assert!(error.to_string().contains("750 bytes"), "{error}");
        let huge = "x".repeat(10 << 20);
        let error = validate_key(KeyKind::Metric, &huge).unwrap_err();
        assert!(error.to_string().contains("bytes of UTF-8"), "{error}");
    }

    #[test]
    fn refuses_bad_keys() {
        for key in [
            "",
            "a/../b",
            "../a",
            "/abs",
            "a//b",
            "a/",
            ".",
            "./a",
            "semi;colon",
            "quote'",
            "new\nline",
            "x".repeat(251).as_str(),
        ] {
            assert!(validate_key(KeyKind::Param, key).is_err(), "{key:?}");
        }
    }

    #[test]
    fn normpath_matches_python() {
        assert_eq!(posix_normpath("a/./b"), "a/b");
        assert_eq!(posix_normpath("a/b/.."), "a");
        assert_eq!(posix_normpath("../x"), "../x");
        assert_eq!(posix_normpath("//x"), "//x");
        assert_eq!(posix_normpath("///x"), "/x");
        assert_eq!(posix_normpath("a/.."), ".");
    }

    #[test]
    fn value_lengths_are_limited() {
        validate_param_value("p", &"v".repeat(6000)).unwrap();
        assert!(validate_param_value("p", &"v".repeat(6001)).is_err());
        validate_tag_value("t", &"v".repeat(8000)).unwrap();
        assert!(validate_tag_value("t", &"v".repeat(8001)).is_err());
        // Multi-byte characters count as one character each.
        validate_tag_value("t", &"é".repeat(8000)).unwrap();
    }

    #[test]
    fn experiment_names_must_be_present() {
        validate_experiment_name("mnist").unwrap();
        assert!(validate_experiment_name("").is_err());
        assert!(validate_experiment_name("   ").is_err());
        assert!(validate_experiment_name(&"n".repeat(501)).is_err());
    }
}
