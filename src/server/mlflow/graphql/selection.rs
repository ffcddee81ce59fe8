//! Selection sets over the schema: collecting a selection set's fields
//! (aliases, fragments, `@skip`/`@include`), validating them against the
//! object types before anything is resolved, and completing a REST
//! answer's JSON into the shape the selection asks for.

use std::collections::HashMap;

use serde_json::{Map, Value as Json};

use super::document::{Directive, Fragment, Selection, Value};
use super::schema::{
    Kind, MAX_SELECTION_DEPTH, MAX_SELECTIONS, ObjectType, object_type, snake_case,
};
use Kind::{Bool, Enum, Float, Long, Object, ObjectList, Str, StrList};

/// A request-level error: the document does not fit the schema or its
/// variables (GraphQL answers these with `data: null`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

/// What completing selections needs besides the value: the document's
/// fragments and the request's variables.
pub struct Context<'a> {
    /// Fragment definitions by name.
    pub fragments: &'a HashMap<String, Fragment>,
    /// Variable values (defaults applied).
    pub variables: &'a Map<String, Json>,
}

/// A field of a collected selection set: its response key, its name, its
/// arguments and the sub-selections of every occurrence (merged).
pub struct CollectedField<'a> {
    /// The key in the response.
    pub response_key: &'a str,
    /// The field name.
    pub name: &'a str,
    /// Arguments of the first occurrence.
    pub arguments: &'a [(String, Value)],
    /// Sub-selections of every occurrence.
    pub selections: Vec<&'a [Selection]>,
}

impl Context<'_> {
    /// An input value with its variables substituted, as JSON.
    pub fn input(&self, value: &Value) -> Json {
        match value {
            Value::Variable(name) => self.variables.get(name).cloned().unwrap_or(Json::Null),
            Value::Int(value) => Json::from(*value),
            Value::Float(value) => {
                serde_json::Number::from_f64(*value).map_or(Json::Null, Json::Number)
            }
            Value::String(text) | Value::Enum(text) => Json::String(text.clone()),
            Value::Boolean(value) => Json::Bool(*value),
            Value::Null => Json::Null,
            Value::List(items) => Json::Array(items.iter().map(|item| self.input(item)).collect()),
            Value::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(name, value)| (name.clone(), self.input(value)))
                    .collect(),
            ),
        }
    }

    /// Whether `@skip` / `@include` keep a selection.
    fn included(&self, directives: &[Directive]) -> Result<bool, ValidationError> {
        for directive in directives {
            let wanted = match directive.name.as_str() {
                "skip" => false,
                "include" => true,
                _ => continue,
            };
            let condition = directive
                .arguments
                .iter()
                .find(|(name, _)| name == "if")
                .map(|(_, value)| self.input(value));
            match condition {
                Some(Json::Bool(value)) => {
                    if value != wanted {
                        return Ok(false);
                    }
                }
                _ => {
                    return Err(ValidationError(format!(
                        "Directive '@{}' argument 'if' of type 'Boolean!' is required",
                        directive.name
                    )));
                }
            }
        }
        Ok(true)
    }

    /// The fields a selection set selects on `type_name`, by response key
    /// in order of first appearance (the specification's
    /// `CollectFields`).
    pub fn collect<'s>(
        &'s self,
        type_name: &str,
        selection: &'s [Selection],
    ) -> Result<Vec<CollectedField<'s>>, ValidationError> {
        let mut fields: Vec<CollectedField<'s>> = Vec::new();
        let mut visited: Vec<&str> = Vec::new();
        self.collect_into(type_name, selection, &mut fields, &mut visited)?;
        Ok(fields)
    }

    fn collect_into<'s>(
        &'s self,
        type_name: &str,
        selection: &'s [Selection],
        fields: &mut Vec<CollectedField<'s>>,
        visited: &mut Vec<&'s str>,
    ) -> Result<(), ValidationError> {
        for item in selection {
            match item {
                Selection::Field(field) => {
                    if !self.included(&field.directives)? {
                        continue;
                    }
                    let key = field.response_key();
                    match fields.iter_mut().find(|seen| seen.response_key == key) {
                        Some(seen) => {
                            if seen.name != field.name {
                                return Err(ValidationError(format!(
                                    "Fields '{key}' conflict because '{}' and '{}' are \
                                     different fields",
                                    seen.name, field.name
                                )));
                            }
                            seen.selections.push(&field.selection);
                        }
                        None => fields.push(CollectedField {
                            response_key: key,
                            name: &field.name,
                            arguments: &field.arguments,
                            selections: vec![&field.selection],
                        }),
                    }
                }
                Selection::FragmentSpread { name, directives } => {
                    if !self.included(directives)? || visited.contains(&name.as_str()) {
                        continue;
                    }
                    let fragment = self
                        .fragments
                        .get(name)
                        .ok_or_else(|| ValidationError(format!("Unknown fragment '{name}'.")))?;
                    visited.push(name);
                    if applies(&fragment.type_condition, type_name)? {
                        self.collect_into(type_name, &fragment.selection, fields, visited)?;
                    }
                }
                Selection::InlineFragment {
                    type_condition,
                    directives,
                    selection,
                } => {
                    if !self.included(directives)? {
                        continue;
                    }
                    let applies = match type_condition {
                        Some(condition) => applies(condition, type_name)?,
                        None => true,
                    };
                    if applies {
                        self.collect_into(type_name, selection, fields, visited)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks `selections` against `object`'s fields before anything is
    /// resolved: unknown fields, leaves with sub-selections and objects
    /// without them, and MLflow's bounds on nesting and selections.
    /// `count` accumulates the field selections seen.
    pub fn validate(
        &self,
        object: &ObjectType,
        selections: &[&[Selection]],
        depth: usize,
        count: &mut usize,
    ) -> Result<(), ValidationError> {
        if depth > MAX_SELECTION_DEPTH {
            return Err(ValidationError(format!(
                "Query exceeds maximum depth of {MAX_SELECTION_DEPTH}"
            )));
        }
        for selection in selections {
            for field in self.collect(object.name, selection)? {
                *count += 1;
                if *count > MAX_SELECTIONS {
                    return Err(ValidationError(format!(
                        "Query exceeds maximum total selections of {MAX_SELECTIONS}"
                    )));
                }
                let has_selection = field.selections.iter().any(|s| !s.is_empty());
                if field.name == "__typename" {
                    if has_selection {
                        return Err(ValidationError(
                            "Field '__typename' must not have a selection since type \
                             'String!' has no subfields."
                                .to_string(),
                        ));
                    }
                    continue;
                }
                let kind = object.field(field.name).ok_or_else(|| {
                    ValidationError(format!(
                        "Cannot query field '{}' on type '{}'.",
                        field.name, object.name
                    ))
                })?;
                match kind {
                    Object(target) | ObjectList(target) => {
                        let target = object_type(target)
                            .ok_or_else(|| ValidationError(format!("Unknown type '{target}'.")))?;
                        if !has_selection {
                            return Err(ValidationError(format!(
                                "Field '{}' of type '{}' must have a selection of subfields.",
                                field.name, target.name
                            )));
                        }
                        self.validate(target, &field.selections, depth + 1, count)?;
                    }
                    _ if has_selection => {
                        return Err(ValidationError(format!(
                            "Field '{}' must not have a selection since its type has no \
                             subfields.",
                            field.name
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The JSON of `source` (an object of type `object`) as `selections`
    /// select it.
    pub fn complete_object(
        &self,
        object: &ObjectType,
        source: &Json,
        selections: &[&[Selection]],
    ) -> Result<Json, ValidationError> {
        let mut out = Map::new();
        for selection in selections {
            for field in self.collect(object.name, selection)? {
                let value = if field.name == "__typename" {
                    Json::String(object.name.to_string())
                } else {
                    let kind = object.field(field.name).ok_or_else(|| {
                        ValidationError(format!(
                            "Cannot query field '{}' on type '{}'.",
                            field.name, object.name
                        ))
                    })?;
                    let member = source.get(snake_case(field.name)).unwrap_or(&Json::Null);
                    self.complete(kind, member, &field.selections, field.name)?
                };
                match out.get_mut(field.response_key) {
                    // The same key selected by two selection sets of one
                    // field (merged): combine the objects.
                    Some(Json::Object(existing)) => {
                        if let Json::Object(more) = value {
                            existing.extend(more);
                        }
                    }
                    _ => {
                        out.insert(field.response_key.to_string(), value);
                    }
                }
            }
        }
        Ok(Json::Object(out))
    }

    /// Completes one field's value.
    pub fn complete(
        &self,
        kind: Kind,
        value: &Json,
        selections: &[&[Selection]],
        name: &str,
    ) -> Result<Json, ValidationError> {
        let has_selection = selections.iter().any(|selection| !selection.is_empty());
        match kind {
            Object(type_name) | ObjectList(type_name) => {
                if !has_selection {
                    return Err(ValidationError(format!(
                        "Field '{name}' of type '{type_name}' must have a selection of subfields."
                    )));
                }
                let object = object_type(type_name)
                    .ok_or_else(|| ValidationError(format!("Unknown type '{type_name}'.")))?;
                match (kind, value) {
                    (Object(_), Json::Object(_)) => self.complete_object(object, value, selections),
                    // The error field is MLflow's own addition: null unless set.
                    (Object(_), _) if name == "apiError" => Ok(Json::Null),
                    // A message field the REST answer leaves out reads as
                    // the empty message over protobuf, as in MLflow.
                    (Object(_), _) => {
                        self.complete_object(object, &Json::Object(Map::new()), selections)
                    }
                    (_, Json::Array(items)) => items
                        .iter()
                        .map(|item| self.complete_object(object, item, selections))
                        .collect::<Result<Vec<_>, _>>()
                        .map(Json::Array),
                    // A repeated field with nothing in it: the REST answer
                    // leaves it out, the GraphQL one is an empty list.
                    _ => Ok(Json::Array(Vec::new())),
                }
            }
            _ if has_selection => Err(ValidationError(format!(
                "Field '{name}' must not have a selection since its type has no subfields."
            ))),
            // Absent scalars read as protobuf's defaults, as MLflow's
            // resolvers read them from messages (a running run's
            // `endTime` is "0").
            Str => Ok(match value {
                Json::String(_) => value.clone(),
                Json::Null => Json::String(String::new()),
                other => Json::String(other.to_string()),
            }),
            Enum => Ok(match value {
                Json::String(_) | Json::Null => value.clone(),
                other => Json::String(other.to_string()),
            }),
            Long => Ok(match value {
                Json::Number(number) => Json::String(number.to_string()),
                Json::String(_) => value.clone(),
                _ => Json::String("0".to_string()),
            }),
            Float => Ok(match value {
                Json::Number(_) => value.clone(),
                Json::Null => Json::from(0.0),
                // "NaN", "Infinity", "-Infinity": GraphQL's Float has no
                // such values (MLflow answers null for NaN).
                _ => Json::Null,
            }),
            Bool => Ok(match value {
                Json::Bool(_) => value.clone(),
                _ => Json::Bool(false),
            }),
            StrList => Ok(match value {
                Json::Array(_) => value.clone(),
                _ => Json::Array(Vec::new()),
            }),
        }
    }
}

/// Whether a fragment on `condition` applies to `type_name`; an unknown
/// type is a validation error.
fn applies(condition: &str, type_name: &str) -> Result<bool, ValidationError> {
    if condition == type_name {
        return Ok(true);
    }
    let known = object_type(condition).is_some() || matches!(condition, "Query" | "Mutation");
    if !known {
        return Err(ValidationError(format!("Unknown type '{condition}'.")));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::super::document::parse;
    use super::super::schema::object_type;
    use super::*;
    use serde_json::json;

    fn complete(query: &str, type_name: &str, source: Json) -> Result<Json, ValidationError> {
        let document = parse(query).unwrap();
        let variables = Map::new();
        let context = Context {
            fragments: &document.fragments,
            variables: &variables,
        };
        let object = object_type(type_name).unwrap();
        context.complete_object(object, &source, &[&document.operations[0].selection])
    }

    #[test]
    fn fields_read_snake_case_members_and_follow_the_selection() {
        let run = json!({
            "info": {"run_id": "r1", "run_name": "base", "status": "RUNNING", "start_time": 1700000000000i64},
            "data": {"metrics": [{"key": "loss", "value": "NaN", "step": 3, "timestamp": 9},
                                 {"key": "acc", "value": 0.5, "step": 4, "timestamp": 10}]},
            "unselected": 1,
        });
        let out = complete(
            "{ info { runName status startTime endTime __typename } data { metrics { key value step } params { key } } inputs { datasetInputs { tags { key } } } }",
            "MlflowRunExtension",
            run,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({
                "info": {"runName": "base", "status": "RUNNING", "startTime": "1700000000000", "endTime": "0", "__typename": "MlflowRunInfo"},
                "data": {"metrics": [{"key": "loss", "value": null, "step": "3"},
                                     {"key": "acc", "value": 0.5, "step": "4"}],
                         "params": []},
                "inputs": {"datasetInputs": []},
            })
        );
    }

    #[test]
    fn aliases_fragments_and_skip_shape_the_answer() {
        let out = complete(
            "{ id: experimentId ...F tags @skip(if: true) { key } ... on MlflowExperiment { name } } fragment F on MlflowExperiment { lifecycleStage }",
            "MlflowExperiment",
            json!({"experiment_id": "1", "name": "mnist", "lifecycle_stage": "active", "tags": [{"key": "a", "value": "b"}]}),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"id": "1", "lifecycleStage": "active", "name": "mnist"})
        );
    }

    #[test]
    fn selections_that_do_not_fit_the_schema_are_validation_errors() {
        let source = json!({});
        for query in [
            "{ nope }",
            "{ info }",
            "{ info { runName { x } } }",
            "{ ...Missing }",
            "{ ... on NoSuchType { info { runName } } }",
            "{ a: info { runName } a: data { metrics { key } } }",
        ] {
            assert!(
                complete(query, "MlflowRunExtension", source.clone()).is_err(),
                "{query}"
            );
        }
    }
}
