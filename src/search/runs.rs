//! Run search: which runs match a filter, and in what order, with MLflow's
//! semantics (metrics compare on their latest value; a run without the key
//! does not match; missing values sort last, after NaN).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::SearchError;
use super::filter::{
    Comparator, Identifier, Literal, RawComparison, like_matches, parse_filter, parse_order_by,
};
use crate::model::Run;

/// The input tag that names how a dataset was used (`training`, ...).
pub const DATASET_CONTEXT_TAG: &str = "mlflow.data.context";

/// A run with the latest value of each of its metric keys.
#[derive(Clone, Debug)]
pub struct SearchableRun {
    /// The run.
    pub run: std::sync::Arc<Run>,
    /// Latest value of each metric key.
    pub latest_metrics: BTreeMap<String, f64>,
}

/// A run attribute that holds text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextAttribute {
    /// `run_id` (also `run_uuid`).
    RunId,
    /// `run_name`.
    RunName,
    /// `status`.
    Status,
    /// `user_id`.
    UserId,
    /// `artifact_uri`.
    ArtifactUri,
    /// `lifecycle_stage`.
    LifecycleStage,
}

/// A run attribute that holds a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeAttribute {
    /// `start_time` (also `created`).
    StartTime,
    /// `end_time`.
    EndTime,
}

/// A dataset field filters can test (true when any input of the run matches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetField {
    /// `datasets.name`.
    Name,
    /// `datasets.digest`.
    Digest,
    /// `datasets.context` (the `mlflow.data.context` input tag).
    Context,
}

/// What a run filter or ordering refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunField {
    /// The latest value of a metric key.
    Metric(String),
    /// A param.
    Param(String),
    /// A tag.
    Tag(String),
    /// A textual attribute.
    Text(TextAttribute),
    /// A time attribute.
    Time(TimeAttribute),
    /// A dataset field.
    Dataset(DatasetField),
}

fn resolve(identifier: &Identifier, for_order: bool) -> Result<RunField, SearchError> {
    let error = |message: String| SearchError::invalid_clause(for_order, message);
    // Without a prefix, an identifier names an attribute (MLflow's rule).
    let prefix = identifier.prefix.as_deref().unwrap_or("attributes");
    let key = identifier.key.clone();
    match prefix {
        "metric" | "metrics" => Ok(RunField::Metric(key)),
        "param" | "params" | "parameter" | "parameters" => Ok(RunField::Param(key)),
        "tag" | "tags" => Ok(RunField::Tag(key)),
        "attribute" | "attributes" | "attr" | "run" => match key.as_str() {
            "run_id" | "run_uuid" => Ok(RunField::Text(TextAttribute::RunId)),
            "run_name" | "run name" | "Run name" | "Run Name" => {
                Ok(RunField::Text(TextAttribute::RunName))
            }
            "status" => Ok(RunField::Text(TextAttribute::Status)),
            "user_id" => Ok(RunField::Text(TextAttribute::UserId)),
            "artifact_uri" => Ok(RunField::Text(TextAttribute::ArtifactUri)),
            "lifecycle_stage" => Ok(RunField::Text(TextAttribute::LifecycleStage)),
            "start_time" | "created" | "Created" => Ok(RunField::Time(TimeAttribute::StartTime)),
            "end_time" => Ok(RunField::Time(TimeAttribute::EndTime)),
            other => Err(error(format!(
                "invalid attribute key '{other}'; valid keys are run_id, run_name, status, \
                 user_id, artifact_uri, lifecycle_stage, start_time, end_time, created"
            ))),
        },
        "dataset" | "datasets" if !for_order => match key.as_str() {
            "name" => Ok(RunField::Dataset(DatasetField::Name)),
            "digest" => Ok(RunField::Dataset(DatasetField::Digest)),
            "context" => Ok(RunField::Dataset(DatasetField::Context)),
            other => Err(error(format!(
                "invalid dataset key '{other}'; valid keys are name, digest, context"
            ))),
        },
        other => Err(error(format!(
            "invalid entity type '{other}'; valid types are metrics, params, tags, attributes \
             and datasets"
        ))),
    }
}

/// A checked comparison on a run field.
#[derive(Clone, Debug, PartialEq)]
pub struct RunComparison {
    /// What is compared.
    pub field: RunField,
    /// How.
    pub comparator: Comparator,
    /// With what.
    pub value: Literal,
}

fn check(raw: RawComparison) -> Result<RunComparison, SearchError> {
    let field = resolve(&raw.identifier, false)?;
    let numeric = matches!(field, RunField::Metric(_) | RunField::Time(_));
    let shown = format!(
        "{}.{}",
        raw.identifier.prefix.as_deref().unwrap_or(""),
        raw.identifier.key
    );
    if numeric {
        if !raw.comparator.is_numeric() {
            return Err(SearchError::InvalidFilter(format!(
                "'{}' is not a valid comparator for {shown}; use one of =, !=, <, <=, >, >=",
                raw.comparator.as_str()
            )));
        }
        if !matches!(raw.value, Literal::Number(_)) {
            return Err(SearchError::InvalidFilter(format!(
                "expected a numeric value for {shown}, got {:?}",
                raw.value
            )));
        }
    } else {
        let null_test = matches!(raw.comparator, Comparator::IsNull | Comparator::IsNotNull);
        let allows_null = matches!(field, RunField::Param(_) | RunField::Tag(_));
        if null_test && !allows_null {
            return Err(SearchError::InvalidFilter(format!(
                "IS NULL / IS NOT NULL is only supported for tags and params, not for {shown}"
            )));
        }
        if !null_test && !raw.comparator.is_textual() {
            return Err(SearchError::InvalidFilter(format!(
                "'{}' is not a valid comparator for {shown}; use one of =, !=, LIKE, ILIKE, IN, \
                 NOT IN",
                raw.comparator.as_str()
            )));
        }
        if matches!(raw.value, Literal::Number(_)) {
            return Err(SearchError::InvalidFilter(format!(
                "expected a quoted string value for {shown} (strings must be quoted with ' or \")"
            )));
        }
    }
    Ok(RunComparison {
        field,
        comparator: raw.comparator,
        value: raw.value,
    })
}

/// Parses and checks a run filter.
pub fn parse_run_filter(text: &str) -> Result<Vec<RunComparison>, SearchError> {
    parse_filter(text)?.into_iter().map(check).collect()
}

fn compare_number(value: f64, comparator: Comparator, target: f64) -> bool {
    match comparator {
        Comparator::Eq => value == target,
        Comparator::Ne => value != target,
        Comparator::Lt => value < target,
        Comparator::Le => value <= target,
        Comparator::Gt => value > target,
        Comparator::Ge => value >= target,
        _ => false,
    }
}

/// Whether a string comparison holds (`value` is what the run has).
pub fn compare_text(value: &str, comparator: Comparator, target: &Literal) -> bool {
    match (comparator, target) {
        (Comparator::Eq, Literal::Text(target)) => value == target,
        (Comparator::Ne, Literal::Text(target)) => value != target,
        (Comparator::Like, Literal::Text(pattern)) => like_matches(pattern, value, false),
        (Comparator::ILike, Literal::Text(pattern)) => like_matches(pattern, value, true),
        (Comparator::In, Literal::List(items)) => items.iter().any(|item| item == value),
        (Comparator::NotIn, Literal::List(items)) => items.iter().all(|item| item != value),
        _ => false,
    }
}

fn text_attribute(run: &Run, attribute: TextAttribute) -> String {
    match attribute {
        TextAttribute::RunId => run.run_id.to_string(),
        TextAttribute::RunName => run.run_name.clone(),
        TextAttribute::Status => run.status.as_str().to_string(),
        TextAttribute::UserId => run.user_id.clone(),
        TextAttribute::ArtifactUri => run.artifact_uri.clone(),
        TextAttribute::LifecycleStage => run.lifecycle_stage.as_str().to_string(),
    }
}

fn time_attribute(run: &Run, attribute: TimeAttribute) -> Option<i64> {
    match attribute {
        TimeAttribute::StartTime => Some(run.start_time),
        TimeAttribute::EndTime => run.end_time,
    }
}

/// Whether a run satisfies one comparison.
pub fn matches(candidate: &SearchableRun, comparison: &RunComparison) -> bool {
    match &comparison.field {
        RunField::Metric(key) => candidate.latest_metrics.get(key).is_some_and(|&value| {
            compare_number(value, comparison.comparator, number_of(&comparison.value))
        }),
        _ => matches_run(&candidate.run, comparison).unwrap_or(false),
    }
}

/// The number a comparison compares with (NaN for a string).
fn number_of(value: &Literal) -> f64 {
    match value {
        Literal::Number(number) => *number,
        _ => f64::NAN,
    }
}

/// The metric keys a search needs the latest values of: those its filter
/// and its ordering name.
pub fn metric_keys<'a>(
    filter: &'a [RunComparison],
    order: &'a [RunOrder],
) -> std::collections::BTreeSet<&'a str> {
    filter
        .iter()
        .map(|comparison| &comparison.field)
        .chain(order.iter().map(|clause| &clause.field))
        .filter_map(|field| match field {
            RunField::Metric(key) => Some(key.as_str()),
            _ => None,
        })
        .collect()
}

/// Whether a run satisfies a comparison that needs nothing but the run
/// (params, tags, attributes, datasets); `None` for a comparison on a
/// metric. A search applies these before it gathers any metric.
pub fn matches_run(run: &Run, comparison: &RunComparison) -> Option<bool> {
    let comparator = comparison.comparator;
    let number = number_of(&comparison.value);
    let optional_text = |value: Option<&str>| match comparator {
        Comparator::IsNull => value.is_none(),
        Comparator::IsNotNull => value.is_some(),
        _ => value.is_some_and(|value| compare_text(value, comparator, &comparison.value)),
    };
    Some(match &comparison.field {
        RunField::Metric(_) => return None,
        RunField::Param(key) => optional_text(run.params.get(key)),
        RunField::Tag(key) => optional_text(run.tags.get(key)),
        RunField::Text(attribute) => {
            let value = text_attribute(run, *attribute);
            match comparator {
                Comparator::IsNull => value.is_empty(),
                Comparator::IsNotNull => !value.is_empty(),
                _ => compare_text(&value, comparator, &comparison.value),
            }
        }
        RunField::Time(attribute) => time_attribute(run, *attribute)
            .is_some_and(|time| compare_number(time as f64, comparator, number)),
        RunField::Dataset(field) => run.inputs.iter().any(|input| {
            let value = match field {
                DatasetField::Name => Some(&input.dataset.name),
                DatasetField::Digest => Some(&input.dataset.digest),
                DatasetField::Context => input.tags.get(DATASET_CONTEXT_TAG),
            };
            value.is_some_and(|value| compare_text(value, comparator, &comparison.value))
        }),
    })
}

/// One checked ordering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOrder {
    /// What to order by.
    pub field: RunField,
    /// Direction.
    pub ascending: bool,
}

/// Parses `order_by` clauses for runs.
pub fn parse_run_order(clauses: &[String]) -> Result<Vec<RunOrder>, SearchError> {
    let mut order: Vec<RunOrder> = Vec::with_capacity(clauses.len());
    for clause in clauses {
        let raw = parse_order_by(clause)?;
        let field = resolve(&raw.identifier, true)?;
        if order.iter().any(|earlier| earlier.field == field) {
            return Err(SearchError::InvalidOrderBy(format!(
                "`order_by` contains duplicate fields: {clause}"
            )));
        }
        order.push(RunOrder {
            field,
            ascending: raw.ascending,
        });
    }
    Ok(order)
}

/// A sortable value: present values first (in the requested direction),
/// then NaN, then missing, whatever the direction (MLflow's rule).
#[derive(Debug, PartialEq)]
enum SortValue {
    Number(f64),
    Text(String),
    NaN,
    Missing,
}

impl SortValue {
    fn rank(&self) -> u8 {
        match self {
            SortValue::Number(_) | SortValue::Text(_) => 0,
            SortValue::NaN => 1,
            SortValue::Missing => 2,
        }
    }
}

fn sort_value(candidate: &SearchableRun, field: &RunField) -> SortValue {
    let run = &candidate.run;
    let text = |value: Option<&str>| {
        value.map_or(SortValue::Missing, |value| {
            SortValue::Text(value.to_string())
        })
    };
    match field {
        RunField::Metric(key) => match candidate.latest_metrics.get(key) {
            Some(value) if value.is_nan() => SortValue::NaN,
            Some(&value) => SortValue::Number(value),
            None => SortValue::Missing,
        },
        RunField::Param(key) => text(run.params.get(key)),
        RunField::Tag(key) => text(run.tags.get(key)),
        RunField::Text(attribute) => SortValue::Text(text_attribute(run, *attribute)),
        RunField::Time(attribute) => time_attribute(run, *attribute)
            .map_or(SortValue::Missing, |time| SortValue::Number(time as f64)),
        RunField::Dataset(_) => SortValue::Missing,
    }
}

fn compare_sort_values(a: &SortValue, b: &SortValue, ascending: bool) -> Ordering {
    let by_rank = a.rank().cmp(&b.rank());
    if by_rank != Ordering::Equal {
        return by_rank;
    }
    let ordering = match (a, b) {
        (SortValue::Number(a), SortValue::Number(b)) => a.total_cmp(b),
        (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
        _ => Ordering::Equal,
    };
    if ascending {
        ordering
    } else {
        ordering.reverse()
    }
}

/// Filters and orders runs: by each `order` clause, then by start time
/// (newest first) and run id, as MLflow breaks ties.
pub fn select_runs(
    candidates: Vec<SearchableRun>,
    filter: &[RunComparison],
    order: &[RunOrder],
) -> Vec<SearchableRun> {
    let mut selected: Vec<(Vec<SortValue>, SearchableRun)> = candidates
        .into_iter()
        .filter(|candidate| {
            filter
                .iter()
                .all(|comparison| matches(candidate, comparison))
        })
        .map(|candidate| {
            let keys = order
                .iter()
                .map(|clause| sort_value(&candidate, &clause.field))
                .collect();
            (keys, candidate)
        })
        .collect();
    selected.sort_by(|(keys_a, a), (keys_b, b)| {
        for (index, clause) in order.iter().enumerate() {
            let ordering = compare_sort_values(&keys_a[index], &keys_b[index], clause.ascending);
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        b.run
            .start_time
            .cmp(&a.run.start_time)
            .then_with(|| a.run.run_id.cmp(&b.run.run_id))
    });
    selected
        .into_iter()
        .map(|(_, candidate)| candidate)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dataset, DatasetInput, ExperimentId, LifecycleStage, RunId, RunStatus};

    fn run(
        name: &str,
        start_time: i64,
        metrics: &[(&str, f64)],
        params: &[(&str, &str)],
    ) -> SearchableRun {
        SearchableRun {
            run: std::sync::Arc::new(Run {
                run_id: RunId::new_random(),
                experiment_id: ExperimentId::DEFAULT,
                run_name: name.to_string(),
                user_id: "alice".to_string(),
                status: RunStatus::Finished,
                start_time,
                end_time: Some(start_time + 10),
                lifecycle_stage: LifecycleStage::Active,
                deleted_time: None,
                artifact_uri: String::new(),
                params: params
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
                tags: crate::model::StringMap::from([("mlflow.runName", name)]),
                inputs: vec![DatasetInput {
                    dataset: Dataset {
                        name: format!("{name}-data"),
                        digest: "abc".to_string(),
                        source_type: "local".to_string(),
                        source: "{}".to_string(),
                        schema: None,
                        profile: None,
                    },
                    tags: BTreeMap::from([(
                        DATASET_CONTEXT_TAG.to_string(),
                        "training".to_string(),
                    )]),
                }],
            }),
            latest_metrics: metrics
                .iter()
                .map(|(key, value)| (key.to_string(), *value))
                .collect(),
        }
    }

    fn names(runs: &[SearchableRun]) -> Vec<&str> {
        runs.iter().map(|run| run.run.run_name.as_str()).collect()
    }

    fn search(runs: &[SearchableRun], filter: &str, order: &[&str]) -> Vec<String> {
        let filter = parse_run_filter(filter).unwrap();
        let order: Vec<String> = order.iter().map(|clause| clause.to_string()).collect();
        let order = parse_run_order(&order).unwrap();
        names(&select_runs(runs.to_vec(), &filter, &order))
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn metric_filters_use_latest_values_and_skip_runs_without_the_key() {
        let runs = vec![
            run("a", 1, &[("acc", 0.95)], &[("lr", "0.01")]),
            run("b", 2, &[("acc", 0.5)], &[("lr", "0.1")]),
            run("c", 3, &[], &[]),
            run("d", 4, &[("acc", f64::NAN)], &[]),
        ];
        assert_eq!(search(&runs, "metrics.acc > 0.9", &[]), ["a"]);
        assert_eq!(search(&runs, "metrics.acc != 0.5", &[]), ["d", "a"]);
        assert_eq!(search(&runs, "params.lr = '0.1'", &[]), ["b"]);
        assert_eq!(search(&runs, "params.lr != '0.1'", &[]), ["a"]);
        assert_eq!(search(&runs, "params.lr IS NULL", &[]), ["d", "c"]);
        assert_eq!(
            search(&runs, "params.lr IN ('0.1', '0.01')", &["params.lr"]),
            ["a", "b"]
        );
        assert_eq!(search(&runs, "attributes.run_name LIKE '_'", &[]).len(), 4);
        assert_eq!(search(&runs, "attributes.start_time >= 3", &[]), ["d", "c"]);
        assert_eq!(search(&runs, "tags.`mlflow.runName` ILIKE 'B'", &[]), ["b"]);
        assert_eq!(search(&runs, "datasets.name = 'c-data'", &[]), ["c"]);
        assert_eq!(search(&runs, "datasets.context = 'training'", &[]).len(), 4);
    }

    #[test]
    fn comparisons_without_metrics_decide_on_the_run_alone() {
        let runs = [
            run("a", 1, &[("acc", 0.95)], &[("lr", "0.01")]),
            run("b", 2, &[("acc", 0.5)], &[("lr", "0.1")]),
        ];
        let filter = parse_run_filter(
            "params.lr = '0.01' and metrics.acc > 0.9 and attributes.start_time >= 1",
        )
        .unwrap();
        let on_run: Vec<Vec<Option<bool>>> = runs
            .iter()
            .map(|candidate| {
                filter
                    .iter()
                    .map(|comparison| matches_run(&candidate.run, comparison))
                    .collect()
            })
            .collect();
        assert_eq!(
            on_run,
            [
                [Some(true), None, Some(true)],
                [Some(false), None, Some(true)]
            ]
        );
        // The full match agrees wherever the run alone decides.
        for (candidate, decided) in runs.iter().zip(&on_run) {
            for (comparison, decided) in filter.iter().zip(decided) {
                if let Some(decided) = decided {
                    assert_eq!(matches(candidate, comparison), *decided);
                }
            }
        }
        let order = parse_run_order(&["metrics.loss DESC".into(), "params.lr".into()]).unwrap();
        let keys: Vec<&str> = metric_keys(&filter, &order).into_iter().collect();
        assert_eq!(keys, ["acc", "loss"]);
    }

    #[test]
    fn ordering_puts_nan_then_missing_last_in_both_directions() {
        let runs = vec![
            run("a", 1, &[("acc", 0.9)], &[]),
            run("b", 2, &[("acc", 0.5)], &[]),
            run("c", 3, &[], &[]),
            run("d", 4, &[("acc", f64::NAN)], &[]),
        ];
        assert_eq!(
            search(&runs, "", &["metrics.acc ASC"]),
            ["b", "a", "d", "c"]
        );
        assert_eq!(
            search(&runs, "", &["metrics.acc DESC"]),
            ["a", "b", "d", "c"]
        );
        assert_eq!(search(&runs, "", &[]), ["d", "c", "b", "a"]);
        assert_eq!(
            search(&runs, "", &["attributes.start_time"]),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn refuses_mismatched_types_and_unknown_fields() {
        for bad in [
            "metrics.acc LIKE '%'",
            "metrics.acc = 'x'",
            "params.lr > 1",
            "params.lr > '1'",
            "attributes.colour = 'x'",
            "colour = 'x'",
            "attributes.status IS NULL",
            "things.x = 'y'",
            "attributes.start_time = 'x'",
        ] {
            assert!(parse_run_filter(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_run_order(&["attributes.colour".to_string()]).is_err());
        assert!(parse_run_order(&["metrics.a".to_string(), "metrics.a DESC".to_string()]).is_err());
        assert_eq!(
            parse_run_filter("status = 'FINISHED'").unwrap()[0].field,
            RunField::Text(TextAttribute::Status)
        );
        assert_eq!(
            parse_run_filter("`Run Name` = 'x'").unwrap()[0].field,
            RunField::Text(TextAttribute::RunName)
        );
    }
}
