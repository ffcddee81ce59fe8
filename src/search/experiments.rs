//! Experiment search: filters on `name`, `creation_time`,
//! `last_update_time` and `tags.<key>`, and ordering on those attributes
//! and `experiment_id`, as MLflow's `search_experiments` does.

use std::cmp::Ordering;

use super::SearchError;
use super::filter::{Comparator, Identifier, Literal, parse_filter, parse_order_by};
use super::runs::compare_text;
use crate::model::Experiment;

/// What an experiment filter or ordering refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExperimentField {
    /// `name`.
    Name,
    /// `experiment_id` (ordering only).
    ExperimentId,
    /// `creation_time`.
    CreationTime,
    /// `last_update_time`.
    LastUpdateTime,
    /// `tags.<key>`.
    Tag(String),
}

fn resolve(identifier: &Identifier, for_order: bool) -> Result<ExperimentField, SearchError> {
    let error = |message: String| SearchError::invalid_clause(for_order, message);
    match identifier.prefix.as_deref() {
        Some("tag" | "tags") if !for_order => Ok(ExperimentField::Tag(identifier.key.clone())),
        None | Some("attribute" | "attributes" | "attr") => match identifier.key.as_str() {
            "name" => Ok(ExperimentField::Name),
            "creation_time" => Ok(ExperimentField::CreationTime),
            "last_update_time" => Ok(ExperimentField::LastUpdateTime),
            "experiment_id" => Ok(ExperimentField::ExperimentId),
            other => Err(error(format!(
                "invalid attribute key '{other}'; valid keys are name, creation_time, \
                 last_update_time{}",
                if for_order { ", experiment_id" } else { "" }
            ))),
        },
        Some(other) => Err(error(format!(
            "invalid entity type '{other}'; valid types are attributes{}",
            if for_order { "" } else { " and tags" }
        ))),
    }
}

/// A checked comparison on an experiment field.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentComparison {
    field: ExperimentField,
    comparator: Comparator,
    value: Literal,
}

/// Parses and checks an experiment filter.
pub fn parse_experiment_filter(text: &str) -> Result<Vec<ExperimentComparison>, SearchError> {
    parse_filter(text)?
        .into_iter()
        .map(|raw| {
            let field = resolve(&raw.identifier, false)?;
            let numeric = matches!(
                field,
                ExperimentField::CreationTime | ExperimentField::LastUpdateTime
            );
            let allowed = match (&field, raw.comparator) {
                _ if numeric => {
                    raw.comparator.is_numeric() && matches!(raw.value, Literal::Number(_))
                }
                (ExperimentField::Tag(_), Comparator::IsNull | Comparator::IsNotNull) => true,
                (ExperimentField::ExperimentId, Comparator::In | Comparator::NotIn) => true,
                _ => {
                    matches!(
                        raw.comparator,
                        Comparator::Eq | Comparator::Ne | Comparator::Like | Comparator::ILike
                    ) && matches!(raw.value, Literal::Text(_))
                }
            };
            if !allowed {
                return Err(SearchError::InvalidFilter(format!(
                    "'{} {}' is not valid for {}: {}",
                    raw.identifier.key,
                    raw.comparator.as_str(),
                    if numeric { "a time" } else { "a string" },
                    if numeric {
                        "use =, !=, <, <=, >, >= with a number"
                    } else {
                        "use =, !=, LIKE, ILIKE with a quoted string"
                    }
                )));
            }
            Ok(ExperimentComparison {
                field,
                comparator: raw.comparator,
                value: raw.value,
            })
        })
        .collect()
}

fn matches(experiment: &Experiment, comparison: &ExperimentComparison) -> bool {
    let number = |value: i64| match comparison.value {
        Literal::Number(target) => {
            let value = value as f64;
            match comparison.comparator {
                Comparator::Eq => value == target,
                Comparator::Ne => value != target,
                Comparator::Lt => value < target,
                Comparator::Le => value <= target,
                Comparator::Gt => value > target,
                Comparator::Ge => value >= target,
                _ => false,
            }
        }
        _ => false,
    };
    match &comparison.field {
        ExperimentField::Name => {
            compare_text(&experiment.name, comparison.comparator, &comparison.value)
        }
        ExperimentField::Tag(key) => {
            let value = experiment.tags.get(key);
            match comparison.comparator {
                Comparator::IsNull => value.is_none(),
                Comparator::IsNotNull => value.is_some(),
                comparator => {
                    value.is_some_and(|value| compare_text(value, comparator, &comparison.value))
                }
            }
        }
        ExperimentField::CreationTime => number(experiment.creation_time),
        ExperimentField::LastUpdateTime => number(experiment.last_update_time),
        ExperimentField::ExperimentId => compare_text(
            &experiment.experiment_id.to_string(),
            comparison.comparator,
            &comparison.value,
        ),
    }
}

/// One checked ordering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExperimentOrder {
    field: ExperimentField,
    ascending: bool,
}

/// Parses `order_by` clauses for experiments.
pub fn parse_experiment_order(clauses: &[String]) -> Result<Vec<ExperimentOrder>, SearchError> {
    clauses
        .iter()
        .map(|clause| {
            let raw = parse_order_by(clause)?;
            Ok(ExperimentOrder {
                field: resolve(&raw.identifier, true)?,
                ascending: raw.ascending,
            })
        })
        .collect()
}

fn compare_by(a: &Experiment, b: &Experiment, field: &ExperimentField) -> Ordering {
    match field {
        ExperimentField::Name => a.name.cmp(&b.name),
        ExperimentField::ExperimentId => a.experiment_id.cmp(&b.experiment_id),
        ExperimentField::CreationTime => a.creation_time.cmp(&b.creation_time),
        ExperimentField::LastUpdateTime => a.last_update_time.cmp(&b.last_update_time),
        ExperimentField::Tag(_) => Ordering::Equal,
    }
}

/// Filters and orders experiments. Without `order_by`, the newest first
/// (creation time descending), ties by experiment id ascending; with it,
/// ties by experiment id descending (both as MLflow's SQL store does).
pub fn select_experiments(
    experiments: Vec<Experiment>,
    filter: &[ExperimentComparison],
    order: &[ExperimentOrder],
) -> Vec<Experiment> {
    let mut selected: Vec<Experiment> = experiments
        .into_iter()
        .filter(|experiment| {
            filter
                .iter()
                .all(|comparison| matches(experiment, comparison))
        })
        .collect();
    selected.sort_by(|a, b| {
        for clause in order {
            let ordering = compare_by(a, b, &clause.field);
            let ordering = if clause.ascending {
                ordering
            } else {
                ordering.reverse()
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        if order.is_empty() {
            b.creation_time
                .cmp(&a.creation_time)
                .then_with(|| a.experiment_id.cmp(&b.experiment_id))
        } else {
            b.experiment_id.cmp(&a.experiment_id)
        }
    });
    selected
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{ExperimentId, LifecycleStage};

    fn experiment(id: u64, name: &str, created: i64, tags: &[(&str, &str)]) -> Experiment {
        Experiment {
            experiment_id: ExperimentId::new(id),
            name: name.to_string(),
            artifact_location: String::new(),
            lifecycle_stage: LifecycleStage::Active,
            creation_time: created,
            last_update_time: created,
            tags: tags
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn names(filter: &str, order: &[&str]) -> Vec<String> {
        let all = vec![
            experiment(1, "vision-a", 10, &[("team", "cv")]),
            experiment(2, "vision-b", 30, &[("team", "cv")]),
            experiment(3, "nlp", 20, &[("team", "nlp")]),
        ];
        let filter = parse_experiment_filter(filter).unwrap();
        let order: Vec<String> = order.iter().map(|clause| clause.to_string()).collect();
        let order = parse_experiment_order(&order).unwrap();
        select_experiments(all, &filter, &order)
            .into_iter()
            .map(|experiment| experiment.name)
            .collect()
    }

    #[test]
    fn filters_and_orders() {
        assert_eq!(names("", &[]), ["vision-b", "nlp", "vision-a"]);
        assert_eq!(
            names("name LIKE 'vision%'", &["name DESC"]),
            ["vision-b", "vision-a"]
        );
        assert_eq!(
            names("tags.team = 'cv'", &["creation_time"]),
            ["vision-a", "vision-b"]
        );
        assert_eq!(names("attributes.name ILIKE 'NLP'", &[]), ["nlp"]);
        assert_eq!(
            names("creation_time > 15", &["experiment_id"]),
            ["vision-b", "nlp"]
        );
        assert_eq!(
            names("experiment_id IN ('1', '3')", &["name"]),
            ["nlp", "vision-a"]
        );
        assert_eq!(names("tags.other IS NULL", &["name"]).len(), 3);
        assert!(parse_experiment_filter("name > 'x'").is_err());
        assert!(parse_experiment_filter("metrics.x > 1").is_err());
        assert!(parse_experiment_order(&["tags.team".to_string()]).is_err());
    }
}
