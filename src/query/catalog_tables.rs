//! The catalog as tables: `experiments`, `experiment_tags`, the lineage
//! tables `artifacts`, `artifact_properties` and `events`, and `rewinds`
//! and `forks`, built from a copy of the catalog taken when the query
//! starts; and the rows of `runs`, `params` and `tags`, which
//! [`super::run_tables`] builds for the runs a scan selects. Ids are
//! strings, times are Arrow timestamps in ms (UTC), status and lifecycle
//! stage are strings.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::Result as DfResult;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::catalog::CatalogState;
use crate::catalog::continuity::Rewind;
use crate::model::{Experiment, ExperimentId, Run, RunId};
use crate::storage::schema::TIMEZONE;

/// Tag holding a run's parent run id (MLflow's convention).
const PARENT_RUN_TAG: &str = "mlflow.parentRunId";

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(TIMEZONE.into()))
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn nullable_text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

/// The schema in `cell`, made of `fields` the first time.
fn cached_schema(
    cell: &'static OnceLock<SchemaRef>,
    fields: impl FnOnce() -> Vec<Field>,
) -> SchemaRef {
    Arc::clone(cell.get_or_init(|| Arc::new(Schema::new(fields()))))
}

/// Schema of `experiments`.
pub fn experiments_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![
            text("experiment_id"),
            text("name"),
            text("lifecycle_stage"),
            text("artifact_location"),
            Field::new("creation_time", timestamp_type(), false),
            Field::new("last_update_time", timestamp_type(), false),
        ]
    })
}

/// Schema of `experiment_tags`.
pub fn experiment_tags_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![text("experiment_id"), text("key"), text("value")]
    })
}

/// Schema of `runs`.
pub fn runs_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![
            text("run_id"),
            text("experiment_id"),
            text("run_name"),
            text("user_id"),
            text("status"),
            Field::new("start_time", timestamp_type(), false),
            Field::new("end_time", timestamp_type(), true),
            text("lifecycle_stage"),
            text("artifact_uri"),
            nullable_text("parent_run_id"),
        ]
    })
}

/// Schema of `params` and `tags`.
pub fn run_key_value_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![
            text("experiment_id"),
            text("run_id"),
            text("key"),
            text("value"),
        ]
    })
}

/// Schema of `artifacts`.
pub fn artifacts_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![
            text("artifact_id"),
            text("type"),
            text("name"),
            text("uri"),
            text("digest"),
            Field::new("creation_time", timestamp_type(), false),
        ]
    })
}

/// Schema of `artifact_properties`.
pub fn artifact_properties_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![text("artifact_id"), text("key"), text("value")]
    })
}

/// Schema of `events`: which run consumed (`INPUT`) or produced
/// (`OUTPUT`) which artifact, at which step.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![
            text("artifact_id"),
            text("run_id"),
            text("experiment_id"),
            text("type"),
            Field::new("step", DataType::Int64, true),
            Field::new("time", timestamp_type(), false),
        ]
    })
}

/// Registers the catalog tables other than `runs`, `params` and `tags` in
/// `context`; returns the bytes they hold.
pub fn register(context: &SessionContext, catalog: &CatalogState) -> DfResult<usize> {
    let experiments: Vec<&Experiment> = catalog.experiments().collect();
    let tables = [
        ("experiments", experiments_batch(&experiments)?),
        ("experiment_tags", experiment_tags_batch(&experiments)?),
        ("artifacts", artifacts_batch(catalog)?),
        ("artifact_properties", artifact_properties_batch(catalog)?),
        ("events", events_batch(catalog)?),
        ("rewinds", rewinds_batch(catalog)?),
        ("forks", forks_batch(catalog)?),
    ];
    let mut bytes = 0;
    for (name, batch) in tables {
        bytes += batch.get_array_memory_size();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        context.register_table(name, Arc::new(table))?;
    }
    Ok(bytes)
}

fn experiments_batch(experiments: &[&Experiment]) -> DfResult<RecordBatch> {
    let mut ids = StringBuilder::new();
    let mut names = StringBuilder::new();
    let mut stages = StringBuilder::new();
    let mut locations = StringBuilder::new();
    let mut created = TimestampMillisecondBuilder::new().with_timezone(TIMEZONE);
    let mut updated = TimestampMillisecondBuilder::new().with_timezone(TIMEZONE);
    for experiment in experiments {
        ids.append_value(experiment.experiment_id.to_string());
        names.append_value(&experiment.name);
        stages.append_value(experiment.lifecycle_stage.as_str());
        locations.append_value(&experiment.artifact_location);
        created.append_value(experiment.creation_time);
        updated.append_value(experiment.last_update_time);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(names.finish()),
        Arc::new(stages.finish()),
        Arc::new(locations.finish()),
        Arc::new(created.finish()),
        Arc::new(updated.finish()),
    ];
    Ok(RecordBatch::try_new(experiments_schema(), columns)?)
}

fn experiment_tags_batch(experiments: &[&Experiment]) -> DfResult<RecordBatch> {
    owner_key_values_batch(
        experiment_tags_schema(),
        experiments
            .iter()
            .map(|experiment| (experiment.experiment_id.to_string(), &experiment.tags)),
    )
}

/// A table of (owner id, key, value) rows: experiment tags, artifact
/// properties.
fn owner_key_values_batch<'a>(
    schema: SchemaRef,
    owners: impl Iterator<Item = (String, &'a BTreeMap<String, String>)>,
) -> DfResult<RecordBatch> {
    let mut ids = StringBuilder::new();
    let mut keys = StringBuilder::new();
    let mut values = StringBuilder::new();
    for (id, entries) in owners {
        for (key, value) in entries {
            ids.append_value(&id);
            keys.append_value(key);
            values.append_value(value);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(keys.finish()),
        Arc::new(values.finish()),
    ];
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// The `runs` rows of `runs`, in the order given.
pub(crate) fn runs_batch(runs: &[&Run]) -> DfResult<RecordBatch> {
    let mut run_ids = StringBuilder::new();
    let mut experiment_ids = StringBuilder::new();
    let mut names = StringBuilder::new();
    let mut users = StringBuilder::new();
    let mut statuses = StringBuilder::new();
    let mut starts = TimestampMillisecondBuilder::new().with_timezone(TIMEZONE);
    let mut ends = TimestampMillisecondBuilder::new().with_timezone(TIMEZONE);
    let mut stages = StringBuilder::new();
    let mut uris = StringBuilder::new();
    let mut parents = StringBuilder::new();
    for run in runs {
        run_ids.append_value(run.run_id.to_string());
        experiment_ids.append_value(run.experiment_id.to_string());
        names.append_value(&run.run_name);
        users.append_value(&run.user_id);
        statuses.append_value(run.status.as_str());
        starts.append_value(run.start_time);
        ends.append_option(run.end_time);
        stages.append_value(run.lifecycle_stage.as_str());
        uris.append_value(&run.artifact_uri);
        parents.append_option(run.tags.get(PARENT_RUN_TAG));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(run_ids.finish()),
        Arc::new(experiment_ids.finish()),
        Arc::new(names.finish()),
        Arc::new(users.finish()),
        Arc::new(statuses.finish()),
        Arc::new(starts.finish()),
        Arc::new(ends.finish()),
        Arc::new(stages.finish()),
        Arc::new(uris.finish()),
        Arc::new(parents.finish()),
    ];
    Ok(RecordBatch::try_new(runs_schema(), columns)?)
}

/// The `params` or `tags` rows (`entries`) of `runs`, in the order given.
pub(crate) fn run_key_values_batch<'a, I>(
    runs: &[&'a Run],
    entries: impl Fn(&'a Run) -> I,
) -> DfResult<RecordBatch>
where
    I: Iterator<Item = (&'a str, &'a str)>,
{
    let mut experiment_ids = StringBuilder::new();
    let mut run_ids = StringBuilder::new();
    let mut keys = StringBuilder::new();
    let mut values = StringBuilder::new();
    for run in runs {
        let experiment_id = run.experiment_id.to_string();
        let run_id = run.run_id.to_string();
        for (key, value) in entries(run) {
            experiment_ids.append_value(&experiment_id);
            run_ids.append_value(&run_id);
            keys.append_value(key);
            values.append_value(value);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(experiment_ids.finish()),
        Arc::new(run_ids.finish()),
        Arc::new(keys.finish()),
        Arc::new(values.finish()),
    ];
    Ok(RecordBatch::try_new(run_key_value_schema(), columns)?)
}

fn artifacts_batch(catalog: &CatalogState) -> DfResult<RecordBatch> {
    let mut ids = StringBuilder::new();
    let mut types = StringBuilder::new();
    let mut names = StringBuilder::new();
    let mut uris = StringBuilder::new();
    let mut digests = StringBuilder::new();
    let mut created = TimestampMillisecondBuilder::new().with_timezone(TIMEZONE);
    for artifact in catalog.lineage().artifacts() {
        ids.append_value(artifact.artifact_id.to_string());
        types.append_value(&artifact.artifact_type);
        names.append_value(&artifact.name);
        uris.append_value(&artifact.uri);
        digests.append_value(&artifact.digest);
        created.append_value(artifact.creation_time);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(types.finish()),
        Arc::new(names.finish()),
        Arc::new(uris.finish()),
        Arc::new(digests.finish()),
        Arc::new(created.finish()),
    ];
    Ok(RecordBatch::try_new(artifacts_schema(), columns)?)
}

fn artifact_properties_batch(catalog: &CatalogState) -> DfResult<RecordBatch> {
    owner_key_values_batch(
        artifact_properties_schema(),
        catalog
            .lineage()
            .artifacts()
            .map(|artifact| (artifact.artifact_id.to_string(), &artifact.properties)),
    )
}

fn events_batch(catalog: &CatalogState) -> DfResult<RecordBatch> {
    let mut artifact_ids = StringBuilder::new();
    let mut run_ids = StringBuilder::new();
    let mut experiment_ids = StringBuilder::new();
    let mut kinds = StringBuilder::new();
    let mut steps = Int64Builder::new();
    let mut times = TimestampMillisecondBuilder::new().with_timezone(TIMEZONE);
    for event in catalog.lineage().events() {
        // Events of runs the copy does not hold (a restricted view) are
        // left out with them.
        let Some(run) = catalog.run(event.run_id) else {
            continue;
        };
        artifact_ids.append_value(event.artifact_id.to_string());
        run_ids.append_value(event.run_id.to_string());
        experiment_ids.append_value(run.experiment_id.to_string());
        kinds.append_value(event.kind.as_str());
        steps.append_option(event.step);
        times.append_value(event.time);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(artifact_ids.finish()),
        Arc::new(run_ids.finish()),
        Arc::new(experiment_ids.finish()),
        Arc::new(kinds.finish()),
        Arc::new(steps.finish()),
        Arc::new(times.finish()),
    ];
    Ok(RecordBatch::try_new(events_schema(), columns)?)
}

/// Schema of `rewinds`: one row per rewind of a run.
pub fn rewinds_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![
            text("run_id"),
            text("experiment_id"),
            Field::new("step", DataType::Int64, false),
            Field::new("time", timestamp_type(), false),
        ]
    })
}

fn rewinds_batch(catalog: &CatalogState) -> DfResult<RecordBatch> {
    let mut run_ids = StringBuilder::new();
    let mut experiment_ids = StringBuilder::new();
    let mut steps = Int64Builder::new();
    let mut times = TimestampMillisecondBuilder::new().with_timezone(TIMEZONE);
    let mut rows: Vec<(RunId, ExperimentId, Rewind)> = catalog
        .continuity()
        .all_rewinds()
        .filter_map(|(run_id, rewinds)| {
            let experiment_id = catalog.run(run_id)?.experiment_id;
            Some(
                rewinds
                    .iter()
                    .map(move |rewind| (run_id, experiment_id, *rewind)),
            )
        })
        .flatten()
        .collect();
    rows.sort_by_key(|(run_id, _, rewind)| (*run_id, rewind.lsn));
    for (run_id, experiment_id, rewind) in rows {
        run_ids.append_value(run_id.to_string());
        experiment_ids.append_value(experiment_id.to_string());
        steps.append_value(rewind.step);
        times.append_value(rewind.time);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(run_ids.finish()),
        Arc::new(experiment_ids.finish()),
        Arc::new(steps.finish()),
        Arc::new(times.finish()),
    ];
    Ok(RecordBatch::try_new(rewinds_schema(), columns)?)
}

/// Schema of `forks`: one row per forked run.
pub fn forks_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    cached_schema(&SCHEMA, || {
        vec![
            text("run_id"),
            text("experiment_id"),
            text("parent_run_id"),
            Field::new("step", DataType::Int64, false),
            Field::new("time", timestamp_type(), false),
        ]
    })
}

fn forks_batch(catalog: &CatalogState) -> DfResult<RecordBatch> {
    let mut run_ids = StringBuilder::new();
    let mut experiment_ids = StringBuilder::new();
    let mut parents = StringBuilder::new();
    let mut steps = Int64Builder::new();
    let mut times = TimestampMillisecondBuilder::new().with_timezone(TIMEZONE);
    let mut rows: Vec<(RunId, ExperimentId, crate::catalog::continuity::Fork)> = catalog
        .continuity()
        .all_forks()
        .filter_map(|(run_id, fork)| Some((run_id, catalog.run(run_id)?.experiment_id, *fork)))
        .collect();
    rows.sort_by_key(|(_, _, fork)| fork.lsn);
    for (run_id, experiment_id, fork) in rows {
        run_ids.append_value(run_id.to_string());
        experiment_ids.append_value(experiment_id.to_string());
        parents.append_value(fork.parent.to_string());
        steps.append_value(fork.step);
        times.append_value(fork.time);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(run_ids.finish()),
        Arc::new(experiment_ids.finish()),
        Arc::new(parents.finish()),
        Arc::new(steps.finish()),
        Arc::new(times.finish()),
    ];
    Ok(RecordBatch::try_new(forks_schema(), columns)?)
}
