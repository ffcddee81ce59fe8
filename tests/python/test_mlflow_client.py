"""The official MLflow client (mlflow-skinny), unchanged, against stepstore's
MLflow tracking REST API.

Run by tests/mlflow_client.rs, which starts a server and points
MLFLOW_TRACKING_URI at it. Every test uses its own experiment (unique name),
so the tests are independent of each other and of their order.
"""

import json
import math
import time

import mlflow
import pytest
import requests
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    Metric,
    Param,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException

HTTP_TIMEOUT = 60


# ---- helpers ----------------------------------------------------------------


def same_float(a, b):
    """Exact equality that treats NaN as equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def wave(step):
    """A deterministic value per step, with non-finite values at fixed steps."""
    special = step % 1000
    if special == 17:
        return float("nan")
    if special == 18:
        return float("inf")
    if special == 19:
        return float("-inf")
    return math.sin(step * 0.001) * (step + 1) / 7.0 + 1.0 / (step + 3)


def strict_json(text):
    """Parses JSON rejecting the bare NaN/Infinity tokens that protobuf's JSON
    parser (and so the MLflow client) refuses."""

    def reject(token):
        raise AssertionError(f"bare {token} token in JSON; it must be a quoted string")

    return json.loads(text, parse_constant=reject)


def names(runs):
    return [run.info.run_name for run in runs]


def search_all(client, experiment_ids, filter_string="", order_by=None, view=ViewType.ACTIVE_ONLY):
    """Every page of a search, concatenated."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=view,
            max_results=1000,
            order_by=order_by,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def error_code(excinfo):
    return excinfo.value.error_code


# ---- experiments ------------------------------------------------------------


def test_set_experiment_creates_then_reuses(client, unique_name):
    name = unique_name("set-exp")
    before = int(time.time() * 1000)
    created = mlflow.set_experiment(name)
    after = int(time.time() * 1000)
    assert created.name == name
    assert created.lifecycle_stage == "active"
    assert created.experiment_id.isdigit(), created.experiment_id
    assert before - 5000 <= created.creation_time <= after + 5000
    assert created.last_update_time >= created.creation_time

    again = mlflow.set_experiment(name)
    assert again.experiment_id == created.experiment_id

    by_name = client.get_experiment_by_name(name)
    assert by_name.experiment_id == created.experiment_id
    by_id = client.get_experiment(created.experiment_id)
    assert by_id.name == name
    assert client.get_experiment_by_name(unique_name("missing")) is None

    by_id_set = mlflow.set_experiment(experiment_id=created.experiment_id)
    assert by_id_set.name == name


def test_create_experiment_with_tags(client, unique_name):
    name = unique_name("tagged")
    experiment_id = client.create_experiment(name, tags={"owner": "alice", "team": "vision"})
    experiment = client.get_experiment(experiment_id)
    assert experiment.name == name
    assert experiment.tags == {"owner": "alice", "team": "vision"}
    client.set_experiment_tag(experiment_id, "stage", "dev")
    assert client.get_experiment(experiment_id).tags["stage"] == "dev"


def test_rename_experiment_and_delete_its_tag(client, unique_name):
    old, new = unique_name("old"), unique_name("new")
    experiment_id = client.create_experiment(old, tags={"keep": "1", "drop": "2"})
    client.rename_experiment(experiment_id, new)
    renamed = client.get_experiment(experiment_id)
    assert renamed.name == new
    assert client.get_experiment_by_name(old) is None
    assert client.get_experiment_by_name(new).experiment_id == experiment_id
    client.delete_experiment_tag(experiment_id, "drop")
    assert client.get_experiment(experiment_id).tags == {"keep": "1"}


def test_duplicate_experiment_name_is_resource_already_exists(client, unique_name, base_url):
    name = unique_name("dup")
    client.create_experiment(name)
    with pytest.raises(MlflowException) as excinfo:
        client.create_experiment(name)
    assert error_code(excinfo) == "RESOURCE_ALREADY_EXISTS"

    response = requests.post(
        f"{base_url}/api/2.0/mlflow/experiments/create", json={"name": name}, timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    assert response.json()["message"]


def test_unknown_ids_are_resource_does_not_exist(client):
    with pytest.raises(MlflowException) as excinfo:
        client.get_run("0123456789abcdef0123456789abcdef")
    assert error_code(excinfo) == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as excinfo:
        client.get_experiment("987654321")
    assert error_code(excinfo) == "RESOURCE_DOES_NOT_EXIST"


def test_unknown_route_is_404(base_url):
    response = requests.get(f"{base_url}/api/2.0/mlflow/no-such-endpoint", timeout=HTTP_TIMEOUT)
    assert response.status_code == 404


def test_delete_and_restore_experiment(client, unique_name):
    name = unique_name("del-exp")
    experiment = mlflow.set_experiment(name)
    with mlflow.start_run(run_name="inside") as run:
        mlflow.log_metric("x", 1.0)
    run_id = run.info.run_id

    client.delete_experiment(experiment.experiment_id)
    deleted = client.get_experiment(experiment.experiment_id)
    assert deleted.lifecycle_stage == "deleted"
    assert deleted.last_update_time >= experiment.last_update_time
    # Its runs go with it.
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    assert search_all(client, [experiment.experiment_id]) == []
    active = client.search_experiments(filter_string=f"name = '{name}'")
    assert list(active) == []
    deleted_only = client.search_experiments(
        view_type=ViewType.DELETED_ONLY, filter_string=f"name = '{name}'"
    )
    assert [e.experiment_id for e in deleted_only] == [experiment.experiment_id]
    # A deleted experiment cannot be the active one, and keeps its name.
    with pytest.raises(MlflowException):
        mlflow.set_experiment(name)
    with pytest.raises(MlflowException) as excinfo:
        client.create_experiment(name)
    assert error_code(excinfo) == "RESOURCE_ALREADY_EXISTS"

    client.restore_experiment(experiment.experiment_id)
    assert client.get_experiment(experiment.experiment_id).lifecycle_stage == "active"
    assert client.get_run(run_id).info.lifecycle_stage == "active"
    assert [r.info.run_id for r in search_all(client, [experiment.experiment_id])] == [run_id]
    assert mlflow.set_experiment(name).experiment_id == experiment.experiment_id


def test_search_experiments_filter_order_and_pages(client, unique_name):
    prefix = unique_name("search-exp")
    created = {}
    for index, (suffix, owner) in enumerate([("a", "alice"), ("b", "bob"), ("c", "alice")]):
        name = f"{prefix}-{suffix}"
        created[name] = client.create_experiment(name, tags={"owner": owner, "idx": str(index)})
        time.sleep(0.01)  # distinct creation times

    ours = client.search_experiments(filter_string=f"name LIKE '{prefix}-%'")
    assert sorted(e.name for e in ours) == sorted(created)
    # Default order: newest first.
    assert [e.name for e in ours] == [f"{prefix}-c", f"{prefix}-b", f"{prefix}-a"]

    exact = client.search_experiments(filter_string=f"name = '{prefix}-b'")
    assert [e.experiment_id for e in exact] == [created[f"{prefix}-b"]]

    alice = client.search_experiments(
        filter_string=f"name LIKE '{prefix}%' AND tags.owner = 'alice'", order_by=["name ASC"]
    )
    assert [e.name for e in alice] == [f"{prefix}-a", f"{prefix}-c"]
    assert all(e.tags["owner"] == "alice" for e in alice)

    by_ilike = client.search_experiments(filter_string=f"name ILIKE '{prefix.upper()}-%'")
    assert len(by_ilike) == 3

    descending = client.search_experiments(
        filter_string=f"name LIKE '{prefix}-%'", order_by=["name DESC"]
    )
    assert [e.name for e in descending] == [f"{prefix}-c", f"{prefix}-b", f"{prefix}-a"]
    oldest_first = client.search_experiments(
        filter_string=f"name LIKE '{prefix}-%'", order_by=["creation_time ASC"]
    )
    assert [e.name for e in oldest_first] == [f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"]

    first = client.search_experiments(
        filter_string=f"name LIKE '{prefix}-%'", order_by=["name ASC"], max_results=2
    )
    assert [e.name for e in first] == [f"{prefix}-a", f"{prefix}-b"]
    assert first.token
    second = client.search_experiments(
        filter_string=f"name LIKE '{prefix}-%'",
        order_by=["name ASC"],
        max_results=2,
        page_token=first.token,
    )
    assert [e.name for e in second] == [f"{prefix}-c"]
    assert not second.token

    client.delete_experiment(created[f"{prefix}-b"])
    active = client.search_experiments(filter_string=f"name LIKE '{prefix}-%'")
    assert sorted(e.name for e in active) == [f"{prefix}-a", f"{prefix}-c"]
    everything = client.search_experiments(
        view_type=ViewType.ALL, filter_string=f"name LIKE '{prefix}-%'"
    )
    assert len(everything) == 3


# ---- runs -------------------------------------------------------------------


def test_start_run_with_name_and_tags(client, experiment):
    before = int(time.time() * 1000)
    with mlflow.start_run(run_name="alpha", tags={"team": "vision"}) as run:
        info = run.info
        assert info.run_name == "alpha"
        assert info.experiment_id == experiment.experiment_id
        assert info.status == "RUNNING"
        assert info.lifecycle_stage == "active"
        assert info.end_time is None
        assert len(info.run_id) >= 16
        live = client.get_run(info.run_id)
        assert live.info.run_name == "alpha"
        assert live.data.tags["mlflow.runName"] == "alpha"
        assert live.data.tags["team"] == "vision"
        assert live.data.tags["mlflow.source.type"] == "LOCAL"
        assert "mlflow.user" in live.data.tags
        assert live.info.user_id == live.data.tags["mlflow.user"]
        assert before - 5000 <= live.info.start_time <= int(time.time() * 1000) + 5000
    after = client.get_run(info.run_id)
    assert after.info.status == "FINISHED"
    assert after.info.end_time is not None
    assert after.info.end_time >= after.info.start_time


def test_start_run_without_name_gets_a_generated_one(client, experiment):
    with mlflow.start_run() as run:
        pass
    fetched = client.get_run(run.info.run_id)
    assert fetched.info.run_name
    assert fetched.info.run_name == run.info.run_name
    assert fetched.data.tags["mlflow.runName"] == fetched.info.run_name


def test_nested_runs_carry_parent_run_id(client, experiment):
    with mlflow.start_run(run_name="parent") as parent:
        with mlflow.start_run(run_name="child", nested=True) as child:
            assert mlflow.active_run().info.run_id == child.info.run_id
        with mlflow.start_run(nested=True) as unnamed_child:
            pass
    parent_id = parent.info.run_id
    child_run = client.get_run(child.info.run_id)
    assert child_run.data.tags["mlflow.parentRunId"] == parent_id
    assert child_run.info.run_name == child_run.data.tags["mlflow.runName"] == "child"
    assert client.get_run(unnamed_child.info.run_id).data.tags["mlflow.parentRunId"] == parent_id
    assert "mlflow.parentRunId" not in client.get_run(parent_id).data.tags

    # An explicit parent_run_id, outside any active run.
    with mlflow.start_run(run_name="adopted", parent_run_id=parent_id) as adopted:
        pass
    assert client.get_run(adopted.info.run_id).data.tags["mlflow.parentRunId"] == parent_id

    children = search_all(
        client, [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(r.info.run_id for r in children) == sorted(
        [child.info.run_id, unnamed_child.info.run_id, adopted.info.run_id]
    )


@pytest.mark.parametrize("status", ["FINISHED", "FAILED", "KILLED"])
def test_end_run_with_each_status(client, experiment, status):
    run = mlflow.start_run(run_name=f"ends-{status.lower()}")
    run_id = run.info.run_id
    start = client.get_run(run_id).info.start_time
    mlflow.end_run(status=status)
    assert mlflow.active_run() is None
    ended = client.get_run(run_id)
    assert ended.info.status == status
    assert ended.info.end_time is not None and ended.info.end_time >= start
    assert ended.info.lifecycle_stage == "active"
    found = search_all(client, [experiment.experiment_id], f"attributes.status = '{status}'")
    assert [r.info.run_id for r in found] == [run_id]


def test_run_failing_inside_with_block_is_failed(client, experiment):
    with pytest.raises(RuntimeError):
        with mlflow.start_run(run_name="crashes") as run:
            raise RuntimeError("boom")
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_set_terminated_and_update_run_name(client, experiment):
    run = client.create_run(experiment.experiment_id, run_name="before", start_time=1_000_000)
    assert run.info.start_time == 1_000_000
    assert run.info.status == "RUNNING"
    client.update_run(run.info.run_id, name="after")
    renamed = client.get_run(run.info.run_id)
    assert renamed.info.run_name == "after"
    assert renamed.data.tags["mlflow.runName"] == "after"
    # Setting the mlflow.runName tag renames the run too.
    client.set_tag(run.info.run_id, "mlflow.runName", "via-tag")
    assert client.get_run(run.info.run_id).info.run_name == "via-tag"
    client.set_terminated(run.info.run_id, status="KILLED", end_time=2_000_000)
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "KILLED"
    assert killed.info.end_time == 2_000_000
    assert RunStatus.from_string(killed.info.status) == RunStatus.KILLED


def test_resume_a_finished_run(client, experiment):
    with mlflow.start_run(run_name="resumable") as run:
        mlflow.log_metric("epoch_loss", 0.5, step=0)
    run_id = run.info.run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    with mlflow.start_run(run_id=run_id) as resumed:
        assert resumed.info.run_id == run_id
        assert client.get_run(run_id).info.status == "RUNNING"
        mlflow.log_metric("epoch_loss", 0.25, step=1)
    final = client.get_run(run_id)
    assert final.info.status == "FINISHED"
    assert final.info.run_name == "resumable"
    assert final.data.metrics["epoch_loss"] == 0.25
    assert [m.value for m in client.get_metric_history(run_id, "epoch_loss")] == [0.5, 0.25]


def test_delete_and_restore_run_with_view_types(client, experiment):
    keep = client.create_run(experiment.experiment_id, run_name="keep")
    gone = client.create_run(experiment.experiment_id, run_name="gone")
    exp_ids = [experiment.experiment_id]

    client.delete_run(gone.info.run_id)
    assert client.get_run(gone.info.run_id).info.lifecycle_stage == "deleted"
    assert names(search_all(client, exp_ids)) == ["keep"]
    assert names(search_all(client, exp_ids, view=ViewType.DELETED_ONLY)) == ["gone"]
    assert sorted(names(search_all(client, exp_ids, view=ViewType.ALL))) == ["gone", "keep"]
    # A deleted run takes no more data.
    with pytest.raises(MlflowException) as excinfo:
        client.log_metric(gone.info.run_id, "x", 1.0)
    assert error_code(excinfo) == "INVALID_PARAMETER_VALUE"

    client.restore_run(gone.info.run_id)
    assert client.get_run(gone.info.run_id).info.lifecycle_stage == "active"
    assert sorted(names(search_all(client, exp_ids))) == ["gone", "keep"]
    assert search_all(client, exp_ids, view=ViewType.DELETED_ONLY) == []
    client.log_metric(gone.info.run_id, "x", 1.0)
    assert client.get_run(gone.info.run_id).data.metrics == {"x": 1.0}
    assert keep.info.run_id != gone.info.run_id


# ---- params ---------------------------------------------------------------


def test_log_param_and_150_params(client, experiment):
    params = {f"param_{i:03d}": i * 0.5 for i in range(150)}
    with mlflow.start_run() as run:
        assert mlflow.log_param("lr", 0.001) == 0.001
        mlflow.log_param("use_bias", True)
        mlflow.log_param("layers", [64, 32])
        mlflow.log_params(params)  # more than 100: the client sends two batches
    fetched = client.get_run(run.info.run_id).data.params
    assert fetched["lr"] == "0.001"
    assert fetched["use_bias"] == "True"
    assert fetched["layers"] == "[64, 32]"
    for key, value in params.items():
        assert fetched[key] == str(value), key
    assert len(fetched) == 153


def test_changed_param_value_is_invalid_parameter_value(client, experiment):
    with mlflow.start_run() as run:
        mlflow.log_param("lr", 0.1)
        mlflow.log_param("lr", 0.1)  # the same value again is fine
        with pytest.raises(MlflowException) as excinfo:
            mlflow.log_param("lr", 0.2)
        assert error_code(excinfo) == "INVALID_PARAMETER_VALUE"
        assert "Changing param values is not allowed" in excinfo.value.message
        with pytest.raises(MlflowException) as excinfo:
            mlflow.log_params({"lr": 0.3, "other": 1})
        assert error_code(excinfo) == "INVALID_PARAMETER_VALUE"
        assert "Changing param values is not allowed" in excinfo.value.message
    assert client.get_run(run.info.run_id).data.params["lr"] == "0.1"


# ---- metrics --------------------------------------------------------------


def test_metric_history_of_10000_steps_is_exact(client, experiment):
    steps = 10_000
    base = 1_700_000_000_000
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        metrics = [Metric("loss", wave(step), base + step, step) for step in range(steps)]
        client.log_batch(run_id, metrics=metrics)  # the client sends 10 batches of 1000
        # The same series through the fluent API, one log_metrics call per step.
        for step in range(0, steps, 50):
            mlflow.log_metrics({"acc": wave(step), "lr": 0.1 / (step + 1)}, step=step)
        # And single points through log_metric.
        for step in range(20):
            mlflow.log_metric("single", wave(step + 15), step=step, timestamp=base + step)

    history = client.get_metric_history(run_id, "loss")
    assert len(history) == steps
    assert [m.step for m in history] == list(range(steps))
    assert [m.timestamp for m in history] == [base + step for step in range(steps)]
    for metric in history:
        assert metric.key == "loss"
        assert same_float(metric.value, wave(metric.step)), (metric.step, metric.value)
    assert sum(math.isnan(m.value) for m in history) == 10
    assert sum(m.value == math.inf for m in history) == 10
    assert sum(m.value == -math.inf for m in history) == 10

    acc = client.get_metric_history(run_id, "acc")
    assert [m.step for m in acc] == list(range(0, steps, 50))
    assert all(same_float(m.value, wave(m.step)) for m in acc)
    single = client.get_metric_history(run_id, "single")
    assert [m.step for m in single] == list(range(20))
    assert all(same_float(m.value, wave(m.step + 15)) for m in single)
    assert client.get_metric_history(run_id, "never-logged") == []

    latest = client.get_run(run_id).data.metrics
    assert latest["loss"] == wave(steps - 1)
    assert latest["acc"] == wave(steps - 50)
    assert latest["lr"] == 0.1 / (steps - 50 + 1)
    assert same_float(latest["single"], wave(19 + 15))


def test_metric_history_past_one_page(client, experiment, base_url):
    """More points than the client's page size (25,000): it follows page tokens."""
    total = 30_000
    base = 1_700_000_000_000
    run_id = client.create_run(experiment.experiment_id).info.run_id
    client.log_batch(run_id, metrics=[Metric("big", s * 0.25, base + s, s) for s in range(total)])
    history = client.get_metric_history(run_id, "big")
    assert len(history) == total
    assert [m.step for m in history] == list(range(total))
    assert all(m.value == m.step * 0.25 for m in history)

    # The same through the REST API by hand, in pages of 7,000.
    steps, token, pages = [], None, 0
    while True:
        params = {"run_id": run_id, "metric_key": "big", "max_results": 7000}
        if token:
            params["page_token"] = token
        response = requests.get(
            f"{base_url}/api/2.0/mlflow/metrics/get-history", params=params, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 200, response.text
        body = strict_json(response.text)
        page = body.get("metrics", [])
        assert len(page) <= 7000
        steps.extend(int(m["step"]) for m in page)
        pages += 1
        token = body.get("next_page_token")
        if not token:
            break
        assert pages < 10, "page tokens do not advance"
    assert steps == list(range(total))
    assert pages in (5, 6)


def test_non_finite_values_round_trip(client, experiment, base_url):
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        mlflow.log_metric("odd", float("nan"), step=0)
        mlflow.log_metric("odd", float("inf"), step=1)
        mlflow.log_metric("odd", float("-inf"), step=2)
        mlflow.log_metric("odd", -0.0, step=3)
        mlflow.log_metric("odd", 5e-324, step=4)
        mlflow.log_metric("odd", 1.7976931348623157e308, step=5)
        mlflow.log_metrics({"last_inf": float("inf"), "last_nan": float("nan")}, step=7)
        mlflow.log_metric("last_ninf", float("-inf"), step=3)
    history = client.get_metric_history(run_id, "odd")
    values = [m.value for m in history]
    assert [m.step for m in history] == [0, 1, 2, 3, 4, 5]
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, 0.0, 5e-324, 1.7976931348623157e308]
    assert math.copysign(1.0, values[3]) == -1.0

    latest = client.get_run(run_id).data.metrics
    assert latest["last_inf"] == math.inf
    assert math.isnan(latest["last_nan"])
    assert latest["last_ninf"] == -math.inf

    # On the wire: quoted "NaN" / "Infinity" / "-Infinity", never bare tokens.
    response = requests.get(
        f"{base_url}/api/2.0/mlflow/metrics/get-history",
        params={"run_id": run_id, "metric_key": "odd"},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    wire = [m["value"] for m in strict_json(response.text)["metrics"]]
    assert wire[:3] == ["NaN", "Infinity", "-Infinity"]


def test_latest_metric_is_the_highest_step(client, experiment):
    with mlflow.start_run() as run:
        mlflow.log_metric("k", 1.0, step=5, timestamp=100)
        mlflow.log_metric("k", 2.0, step=3, timestamp=200)  # older step, logged later
        mlflow.log_metric("t", 1.0, step=0, timestamp=300)
        mlflow.log_metric("t", 2.0, step=0, timestamp=100)  # same step, older timestamp
    fetched = client.get_run(run.info.run_id).data.metrics
    assert fetched["k"] == 1.0
    assert fetched["t"] == 1.0
    history = client.get_metric_history(run.info.run_id, "k")
    assert sorted((m.step, m.value) for m in history) == [(3, 2.0), (5, 1.0)]


def test_log_batch_metrics_params_tags(client, experiment):
    run = client.create_run(experiment.experiment_id, run_name="batch")
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric("m1", float(i), now + i, i) for i in range(5)]
    metrics += [Metric("m2", -1.5, now, 0)]
    params = [Param("alpha", "0.5"), Param("beta", "two")]
    tags = [RunTag("stage", "tuning"), RunTag("owner", "bob")]
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)

    data = client.get_run(run_id).data
    assert data.metrics == {"m1": 4.0, "m2": -1.5}
    assert data.params == {"alpha": "0.5", "beta": "two"}
    assert data.tags["stage"] == "tuning"
    assert data.tags["owner"] == "bob"
    history = client.get_metric_history(run_id, "m1")
    assert [(m.step, m.value, m.timestamp) for m in history] == [
        (i, float(i), now + i) for i in range(5)
    ]

    # Many params and tags in one call: the client splits them by 100.
    many_params = [Param(f"p{i}", str(i)) for i in range(250)]
    many_tags = [RunTag(f"t{i}", f"v{i}") for i in range(120)]
    client.log_batch(run_id, params=many_params, tags=many_tags)
    data = client.get_run(run_id).data
    assert all(data.params[f"p{i}"] == str(i) for i in range(250))
    assert all(data.tags[f"t{i}"] == f"v{i}" for i in range(120))

    # Changing a param through log_batch fails as well.
    with pytest.raises(MlflowException) as excinfo:
        client.log_batch(run_id, params=[Param("alpha", "0.6")])
    assert error_code(excinfo) == "INVALID_PARAMETER_VALUE"


def test_asynchronous_logging(client, experiment):
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        operations = []
        for step in range(200):
            operations.append(
                mlflow.log_metrics({"async_loss": 1.0 / (step + 1)}, step=step, synchronous=False)
            )
        operations.append(mlflow.log_params({"async_p": "yes"}, synchronous=False))
        operations.append(mlflow.set_tags({"async_t": "done"}, synchronous=False))
        operations.append(mlflow.log_param("async_single", 3, synchronous=False))
        for operation in operations:
            if operation is not None:
                operation.wait()
        mlflow.flush_async_logging()
        history = client.get_metric_history(run_id, "async_loss")
        assert sorted(m.step for m in history) == list(range(200))
        assert all(m.value == 1.0 / (m.step + 1) for m in history)
    data = client.get_run(run_id).data
    assert data.params["async_p"] == "yes"
    assert data.params["async_single"] == "3"
    assert data.tags["async_t"] == "done"
    assert data.metrics["async_loss"] == 1.0 / 200


# ---- tags -----------------------------------------------------------------


def test_set_tags_and_delete_tag(client, experiment):
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        mlflow.set_tag("color", "red")
        mlflow.set_tags({"shape": "square", "size": "L", "with space": "yes"})
        mlflow.set_tag("color", "blue")  # tags are mutable
        mlflow.delete_tag("size")
    client.set_tag(run_id, "after_end", "ok")
    client.delete_tag(run_id, "shape")
    tags = client.get_run(run_id).data.tags
    assert tags["color"] == "blue"
    assert tags["with space"] == "yes"
    assert tags["after_end"] == "ok"
    assert "size" not in tags
    assert "shape" not in tags
    with pytest.raises(MlflowException) as excinfo:
        client.delete_tag(run_id, "never-set")
    assert error_code(excinfo) == "RESOURCE_DOES_NOT_EXIST"


# ---- inputs ---------------------------------------------------------------


def test_log_inputs_with_datasets(client, experiment):
    train = Dataset(
        name="mnist-train",
        digest="a1b2c3d4",
        source_type="http",
        source=json.dumps({"url": "https://example.com/mnist-train.csv"}),
        schema=json.dumps({"mlflow_colspec": [{"type": "double", "name": "x"}]}),
        profile=json.dumps({"num_rows": 60000}),
    )
    evaluation = Dataset(
        name="mnist-eval", digest="e5f6", source_type="local", source='{"path": "/data/eval"}'
    )
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        client.log_inputs(
            run_id,
            datasets=[
                DatasetInput(train, tags=[InputTag("mlflow.data.context", "training")]),
                DatasetInput(evaluation, tags=[InputTag("mlflow.data.context", "eval")]),
            ],
        )
        # Logging the same dataset again (e.g. every epoch) does not duplicate it.
        client.log_inputs(
            run_id, datasets=[DatasetInput(train, tags=[InputTag("mlflow.data.context", "training")])]
        )
    inputs = client.get_run(run_id).inputs.dataset_inputs
    by_name = {item.dataset.name: item for item in inputs}
    assert sorted(by_name) == ["mnist-eval", "mnist-train"]
    assert len(inputs) == 2
    got = by_name["mnist-train"]
    assert got.dataset.digest == "a1b2c3d4"
    assert got.dataset.source_type == "http"
    assert json.loads(got.dataset.source) == {"url": "https://example.com/mnist-train.csv"}
    assert json.loads(got.dataset.schema) == {"mlflow_colspec": [{"type": "double", "name": "x"}]}
    assert json.loads(got.dataset.profile) == {"num_rows": 60000}
    assert {t.key: t.value for t in got.tags} == {"mlflow.data.context": "training"}
    got_eval = by_name["mnist-eval"]
    assert got_eval.dataset.digest == "e5f6"
    assert got_eval.dataset.source == '{"path": "/data/eval"}'
    assert {t.key: t.value for t in got_eval.tags} == {"mlflow.data.context": "eval"}


# ---- search runs ----------------------------------------------------------


@pytest.fixture
def search_fixture(client, experiment):
    """Six runs with known metrics, params, tags, statuses and start times.

    name   acc    val loss  opt   batch-size  team         my tag  status    start
    r1     0.9    0.10      adam  32          vision-core  x       FINISHED  +1000
    r2     0.7    0.25      adam  64          Vision       -       FINISHED  +2000
    r3     0.5    0.40      sgd   32          nlp          y       FAILED    +3000
    r4     0.2    0.80      sgd   -           -            -       RUNNING   +4000
    r5     NaN    -         rms   16          vision       -       FINISHED  +5000
    r6     -      -         -     -           audio        -       KILLED    +6000
    """
    exp_id = experiment.experiment_id
    base = 1_600_000_000_000
    rows = [
        ("r1", 0.9, 0.10, "adam", "32", "vision-core", "x", "FINISHED"),
        ("r2", 0.7, 0.25, "adam", "64", "Vision", None, "FINISHED"),
        ("r3", 0.5, 0.40, "sgd", "32", "nlp", "y", "FAILED"),
        ("r4", 0.2, 0.80, "sgd", None, None, None, "RUNNING"),
        ("r5", float("nan"), None, "rms", "16", "vision", None, "FINISHED"),
        ("r6", None, None, None, None, "audio", None, "KILLED"),
    ]
    ids = {}
    for index, (name, acc, val_loss, opt, batch, team, my_tag, status) in enumerate(rows):
        start = base + (index + 1) * 1000
        run = client.create_run(exp_id, run_name=name, start_time=start)
        run_id = run.info.run_id
        ids[name] = run_id
        metrics, params, tags = [], [], []
        if acc is not None:
            metrics.append(Metric("acc", acc, start, 1))
        if val_loss is not None:
            metrics.append(Metric("val loss", val_loss, start, 1))
        if opt is not None:
            params.append(Param("opt", opt))
        if batch is not None:
            params.append(Param("batch-size", batch))
        if team is not None:
            tags.append(RunTag("team", team))
        if my_tag is not None:
            tags.append(RunTag("my tag", my_tag))
        client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        if status != "RUNNING":
            client.set_terminated(run_id, status=status, end_time=start + 500)
    return exp_id, ids


@pytest.mark.parametrize(
    ("filter_string", "expected"),
    [
        ("metrics.acc > 0.6", {"r1", "r2"}),
        ("metrics.acc >= 0.5", {"r1", "r2", "r3"}),
        ("metrics.acc < 0.5", {"r4"}),
        ("metrics.acc <= 0.5", {"r3", "r4"}),
        ("metrics.acc = 0.7", {"r2"}),
        ("metrics.acc != 0.7", {"r1", "r3", "r4", "r5"}),
        ("metric.acc > 0.6", {"r1", "r2"}),
        ("metrics.acc > 0.3 and params.opt = 'adam'", {"r1", "r2"}),
        ("params.opt = 'sgd'", {"r3", "r4"}),
        ('params.opt = "sgd"', {"r3", "r4"}),
        ("param.opt != 'sgd'", {"r1", "r2", "r5"}),
        ("params.opt LIKE 'a%'", {"r1", "r2"}),
        ("params.opt ILIKE 'ADA_'", {"r1", "r2"}),
        ("params.opt IS NULL", {"r6"}),
        ("params.opt IS NOT NULL", {"r1", "r2", "r3", "r4", "r5"}),
        ("tags.team LIKE '%vision%'", {"r1", "r5"}),
        ("tags.team ILIKE '%vision%'", {"r1", "r2", "r5"}),
        ("tag.team = 'audio'", {"r6"}),
        ("tags.team != 'audio'", {"r1", "r2", "r3", "r5"}),
        ("tags.team IS NULL", {"r4"}),
        ("attributes.status = 'FINISHED'", {"r1", "r2", "r5"}),
        ("attribute.status != 'FINISHED'", {"r3", "r4", "r6"}),
        ("status = 'RUNNING'", {"r4"}),
        ("attributes.run_name = 'r3'", {"r3"}),
        ("run_name LIKE 'r%'", {"r1", "r2", "r3", "r4", "r5", "r6"}),
        ("attributes.run_name ILIKE 'R1'", {"r1"}),
        ("metrics.`val loss` < 0.3", {"r1", "r2"}),
        ('metrics."val loss" >= 0.4', {"r3", "r4"}),
        ("params.`batch-size` = '32'", {"r1", "r3"}),
        ("tags.`my tag` = 'x'", {"r1"}),
        ("`params`.opt = 'rms'", {"r5"}),
        ("params.opt = 'adam' AND tags.team = 'Vision' AND metrics.acc > 0.1", {"r2"}),
        ("params.opt = 'nope'", set()),
    ],
)
def test_search_runs_filters(client, search_fixture, filter_string, expected):
    exp_id, _ = search_fixture
    found = search_all(client, [exp_id], filter_string)
    assert set(names(found)) == expected, filter_string


def test_search_runs_by_run_id_in_and_not_in(client, search_fixture):
    exp_id, ids = search_fixture
    wanted = f"('{ids['r2']}', '{ids['r5']}')"
    found = search_all(client, [exp_id], f"attributes.run_id IN {wanted}")
    assert set(names(found)) == {"r2", "r5"}
    rest = search_all(client, [exp_id], f"attributes.run_id NOT IN {wanted}")
    assert set(names(rest)) == {"r1", "r3", "r4", "r6"}
    one = search_all(client, [exp_id], f"run_id = '{ids['r4']}'")
    assert names(one) == ["r4"]


def test_search_runs_by_start_time(client, search_fixture):
    exp_id, _ = search_fixture
    base = 1_600_000_000_000
    found = search_all(client, [exp_id], f"attributes.start_time >= {base + 4000}")
    assert set(names(found)) == {"r4", "r5", "r6"}
    found = search_all(client, [exp_id], f"attributes.end_time < {base + 3000}")
    assert set(names(found)) == {"r1", "r2"}


def test_search_runs_ordering(client, search_fixture):
    exp_id, _ = search_fixture
    # Default: newest start_time first.
    assert names(search_all(client, [exp_id])) == ["r6", "r5", "r4", "r3", "r2", "r1"]
    assert names(search_all(client, [exp_id], order_by=["attributes.start_time ASC"])) == [
        "r1",
        "r2",
        "r3",
        "r4",
        "r5",
        "r6",
    ]
    # Real values first in the asked direction, then NaN, then runs without the key.
    assert names(search_all(client, [exp_id], order_by=["metrics.acc DESC"])) == [
        "r1",
        "r2",
        "r3",
        "r4",
        "r5",
        "r6",
    ]
    assert names(search_all(client, [exp_id], order_by=["metrics.acc ASC"])) == [
        "r4",
        "r3",
        "r2",
        "r1",
        "r5",
        "r6",
    ]
    assert names(search_all(client, [exp_id], order_by=["metrics.`val loss`"]))[:4] == [
        "r1",
        "r2",
        "r3",
        "r4",
    ]
    # Params sort as strings; ties broken by the next clause, then start_time DESC.
    assert names(
        search_all(client, [exp_id], order_by=["params.opt ASC", "metrics.acc DESC"])
    ) == ["r1", "r2", "r5", "r3", "r4", "r6"]
    assert names(search_all(client, [exp_id], order_by=["params.opt DESC"])) == [
        "r4",
        "r3",
        "r5",
        "r2",
        "r1",
        "r6",
    ]
    assert names(search_all(client, [exp_id], order_by=["attributes.run_name DESC"])) == [
        "r6",
        "r5",
        "r4",
        "r3",
        "r2",
        "r1",
    ]
    filtered = search_all(
        client, [exp_id], "params.opt = 'adam'", order_by=["metrics.acc ASC"]
    )
    assert names(filtered) == ["r2", "r1"]


def test_search_runs_pages(client, search_fixture):
    exp_id, _ = search_fixture
    everything = names(search_all(client, [exp_id], order_by=["metrics.acc DESC"]))
    pages, token = [], None
    while True:
        page = client.search_runs(
            [exp_id], max_results=4, order_by=["metrics.acc DESC"], page_token=token
        )
        assert 0 < len(page) <= 4
        pages.append(names(page))
        token = page.token
        if not token:
            break
    assert pages == [everything[:4], everything[4:]]

    pages, token = [], None
    for _ in range(10):
        page = client.search_runs([exp_id], max_results=1, page_token=token)
        pages.extend(names(page))
        token = page.token
        if not token:
            break
    assert pages == ["r6", "r5", "r4", "r3", "r2", "r1"]

    exact = client.search_runs([exp_id], max_results=6)
    assert len(exact) == 6
    assert not exact.token

    fluent = mlflow.search_runs(
        experiment_ids=[exp_id],
        filter_string="params.opt = 'sgd'",
        order_by=["metrics.acc DESC"],
        output_format="list",
    )
    assert names(fluent) == ["r3", "r4"]


def test_search_runs_returns_run_data(client, search_fixture):
    exp_id, ids = search_fixture
    (run,) = search_all(client, [exp_id], "attributes.run_name = 'r1'")
    assert run.info.run_id == ids["r1"]
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == exp_id
    assert run.data.metrics == {"acc": 0.9, "val loss": 0.10}
    assert run.data.params == {"opt": "adam", "batch-size": "32"}
    assert run.data.tags["team"] == "vision-core"
    assert run.data.tags["mlflow.runName"] == "r1"


def test_search_runs_across_experiments(client, unique_name):
    first = client.create_experiment(unique_name("multi-a"))
    second = client.create_experiment(unique_name("multi-b"))
    run_a = client.create_run(first, run_name="in-a")
    run_b = client.create_run(second, run_name="in-b")
    found = search_all(client, [first, second])
    assert sorted(r.info.run_id for r in found) == sorted([run_a.info.run_id, run_b.info.run_id])
    assert {r.info.experiment_id for r in found} == {first, second}


def test_bad_search_filter_is_invalid_parameter_value(client, experiment):
    with pytest.raises(MlflowException) as excinfo:
        client.search_runs([experiment.experiment_id], "metrics.acc > 'high'")
    assert error_code(excinfo) == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as excinfo:
        client.search_runs([experiment.experiment_id], "params.opt = adam")
    assert error_code(excinfo) == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as excinfo:
        client.search_runs([experiment.experiment_id], "attributes.nonexistent = 'x'")
    assert error_code(excinfo) == "INVALID_PARAMETER_VALUE"


# ---- get-history-bulk-interval ---------------------------------------------


def bulk_interval(base_url, run_ids, key, prefix="/ajax-api", **extra):
    response = requests.get(
        f"{base_url}{prefix}/2.0/mlflow/metrics/get-history-bulk-interval",
        params={"run_ids": run_ids, "metric_key": key, **extra},
        timeout=HTTP_TIMEOUT,
    )
    return response


def test_get_history_bulk_interval(client, experiment, base_url):
    long_run = client.create_run(experiment.experiment_id, run_name="long").info.run_id
    short_run = client.create_run(experiment.experiment_id, run_name="short").info.run_id
    base = 1_700_000_000_000
    client.log_batch(long_run, metrics=[Metric("loss", wave(s), base + s, s) for s in range(5000)])
    client.log_batch(
        short_run, metrics=[Metric("loss", wave(s), base + s, s) for s in range(0, 300, 3)]
    )

    response = bulk_interval(base_url, [long_run, short_run], "loss", max_results=100)
    assert response.status_code == 200, response.text
    points = strict_json(response.text)["metrics"]
    by_run = {long_run: [], short_run: []}
    for point in points:
        assert point["key"] == "loss"
        by_run[point["run_id"]].append(point)
    for run_id, last in [(long_run, 4999), (short_run, 297)]:
        steps = [int(p["step"]) for p in by_run[run_id]]
        assert 2 <= len(steps) <= 100, (run_id, len(steps))
        assert steps[0] == 0, run_id
        assert steps[-1] == last, run_id
        assert steps == sorted(set(steps)), run_id
        for point in by_run[run_id]:
            value = point["value"]
            value = float(value) if isinstance(value, str) else value
            assert same_float(value, wave(int(point["step"])))
            assert int(point["timestamp"]) == base + int(point["step"])
    # The long run is sampled across its whole range, not just its start.
    long_steps = [int(p["step"]) for p in by_run[long_run]]
    assert len(long_steps) >= 50
    assert max(b - a for a, b in zip(long_steps, long_steps[1:])) <= 200

    # Fewer points than max_results: all of them.
    response = bulk_interval(base_url, [short_run], "loss", max_results=500)
    assert response.status_code == 200, response.text
    steps = [int(p["step"]) for p in strict_json(response.text)["metrics"]]
    assert steps == list(range(0, 300, 3))

    # A step window keeps both ends of the window.
    response = bulk_interval(
        base_url, [long_run], "loss", max_results=50, start_step=1000, end_step=2000
    )
    assert response.status_code == 200, response.text
    steps = [int(p["step"]) for p in strict_json(response.text)["metrics"]]
    assert steps[0] == 1000 and steps[-1] == 2000
    assert len(steps) <= 50
    assert all(1000 <= s <= 2000 for s in steps)

    # Default max_results, and the /api/2.0 mount.
    response = bulk_interval(base_url, [long_run], "loss", prefix="/api")
    assert response.status_code == 200, response.text
    steps = [int(p["step"]) for p in strict_json(response.text)["metrics"]]
    assert steps[0] == 0 and steps[-1] == 4999
    assert len(steps) <= 2500

    response = bulk_interval(base_url, [long_run], "loss", max_results=0)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


# ---- native API interop ---------------------------------------------------


def test_run_created_by_native_api_is_visible_to_mlflow(client, experiment, base_url):
    response = requests.post(
        f"{base_url}/api/v1/runs",
        json={
            "experiment_id": experiment.experiment_id,
            "run_name": "native-run",
            "params": {"lr": 0.01, "optimizer": "adam"},
        },
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    run_id = response.json()["run_id"]
    base = 1_700_000_000_000
    points = [
        {"key": "loss", "value": 1.0 / (s + 1), "step": s, "timestamp": base + s} for s in range(50)
    ]
    points.append({"key": "loss", "value": "NaN", "step": 50, "timestamp": base + 50})
    points.append({"key": "grad", "value": "Infinity", "step": 0, "timestamp": base})
    response = requests.post(
        f"{base_url}/api/v1/runs/{run_id}/metrics", json={"points": points}, timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 200, response.text

    run = client.get_run(run_id)
    assert run.info.run_name == "native-run"
    assert run.info.experiment_id == experiment.experiment_id
    assert run.info.status == "RUNNING"
    assert run.data.params == {"lr": "0.01", "optimizer": "adam"}
    assert run.data.tags.get("mlflow.runName") == "native-run"
    assert math.isnan(run.data.metrics["loss"])
    assert run.data.metrics["grad"] == math.inf
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(51))
    assert [m.value for m in history[:50]] == [1.0 / (s + 1) for s in range(50)]
    assert math.isnan(history[50].value)

    found = search_all(client, [experiment.experiment_id], "params.optimizer = 'adam'")
    assert [r.info.run_id for r in found] == [run_id]
    found = search_all(client, [experiment.experiment_id], "attributes.run_name = 'native-run'")
    assert [r.info.run_id for r in found] == [run_id]

    # And mlflow can keep logging to it.
    client.log_metric(run_id, "loss", 0.001, step=51, timestamp=base + 51)
    client.set_terminated(run_id)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.metrics["loss"] == 0.001


def test_run_created_by_mlflow_is_visible_to_native_api(client, experiment, base_url):
    with mlflow.start_run(run_name="from-mlflow") as run:
        run_id = run.info.run_id
        mlflow.log_params({"depth": 6, "eta": 0.3})
        mlflow.set_tag("owner", "carol")
        for step in range(30):
            mlflow.log_metric("auc", 0.5 + step / 100.0, step=step)
        mlflow.log_metric("auc", float("-inf"), step=30)
    response = requests.get(f"{base_url}/api/v1/runs/{run_id}", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    body = strict_json(response.text)
    assert body["run_id"] == run_id
    assert body["run_name"] == "from-mlflow"
    assert str(body["experiment_id"]) == experiment.experiment_id
    assert body["status"] == "FINISHED"
    assert body["params"] == {"depth": "6", "eta": "0.3"}
    assert body["tags"]["owner"] == "carol"
    assert body["tags"]["mlflow.runName"] == "from-mlflow"
    assert "auc" in body["metrics"]

    response = requests.get(f"{base_url}/api/v1/runs/{run_id}/metrics/auc", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    series = strict_json(response.text)
    assert series["steps"] == list(range(31))
    assert series["values"][:30] == [0.5 + step / 100.0 for step in range(30)]
    assert series["values"][30] == "-Infinity"


def test_a_preempted_run_resumes_and_rewinds_through_a_tag(client, experiment, base_url):
    """The preemption story with the unchanged client: a run logged up to
    step 212 is killed; it resumes from its checkpoint at step 200 by
    setting the status back to RUNNING and the tag
    `stepstore.rewind_to_step`; steps 201.. are logged again. Every read
    shows each step once, with the new values; the hidden ones stay
    readable natively."""
    run = client.create_run(experiment.experiment_id)
    run_id = run.info.run_id
    for step in range(0, 213):
        client.log_metric(run_id, "loss", 1.0 / (step + 1), step=step, timestamp=1000 + step)
    client.set_terminated(run_id, "KILLED")
    # The restarted trainer resumes the same run from its checkpoint.
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, "stepstore.rewind_to_step", "200")
    for step in range(201, 260):
        client.log_metric(run_id, "loss", -float(step), step=step, timestamp=5000 + step)
    history = client.get_metric_history(run_id, "loss")
    steps = sorted(metric.step for metric in history)
    assert steps == list(range(0, 260)), "each step once"
    by_step = {metric.step: metric.value for metric in history}
    assert by_step[200] == 1.0 / 201
    assert by_step[201] == -201.0 and by_step[212] == -212.0
    latest = client.get_run(run_id).data.metrics["loss"]
    assert latest == -259.0
    assert client.get_run(run_id).data.tags["stepstore.rewind_to_step"] == "200"
    # log_batch with the tag: the rewind comes before the batch's metrics.
    client.log_batch(
        run_id,
        metrics=[Metric("loss", 7.0, 9000, 251)],
        tags=[RunTag("stepstore.rewind_to_step", "250")],
    )
    history = client.get_metric_history(run_id, "loss")
    assert sorted(metric.step for metric in history) == list(range(0, 252))
    assert {metric.step: metric.value for metric in history}[251] == 7.0
    # The hidden points are kept: 12 from the first rewind, 9 from the second.
    response = requests.get(
        f"{base_url}/api/v1/runs/{run_id}/metrics/loss",
        params={"max_points": 0, "include_rewound": "true"},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["steps"]) == 260 + 12 + 1
    runs = client.search_runs([experiment.experiment_id], filter_string="metrics.loss = 7")
    assert [found.info.run_id for found in runs] == [run_id]
    with pytest.raises(MlflowException) as refused:
        client.set_tag(run_id, "stepstore.rewind_to_step", "two hundred")
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_run_forks_from_a_checkpoint_through_tags(client, experiment, base_url):
    """A sweep forks a run at its step-100 checkpoint with the unchanged
    client: `runs/create` with the tags `stepstore.fork_from_run_id` and
    `stepstore.fork_from_step`. The fork starts with the parent's params,
    tags and points up to step 100, then logs its own; the parent is
    unchanged, and deleting it keeps the fork readable."""
    parent = client.create_run(experiment.experiment_id, tags={"team": "vision"})
    parent_id = parent.info.run_id
    client.log_param(parent_id, "lr", "0.1")
    for step in range(0, 150):
        client.log_metric(parent_id, "loss", 1.0 / (step + 1), step=step, timestamp=1000 + step)
    child = client.create_run(
        experiment.experiment_id,
        tags={"stepstore.fork_from_run_id": parent_id, "stepstore.fork_from_step": "100"},
    )
    child_id = child.info.run_id
    for step in range(101, 120):
        client.log_metric(child_id, "loss", -float(step), step=step, timestamp=5000 + step)
    history = client.get_metric_history(child_id, "loss")
    assert sorted(metric.step for metric in history) == list(range(0, 120))
    by_step = {metric.step: metric.value for metric in history}
    assert by_step[100] == 1.0 / 101 and by_step[101] == -101.0
    forked = client.get_run(child_id)
    assert forked.data.metrics["loss"] == -119.0
    assert forked.data.params == {"lr": "0.1"}
    assert forked.data.tags["team"] == "vision"
    assert len(client.get_metric_history(parent_id, "loss")) == 150
    runs = client.search_runs([experiment.experiment_id], filter_string="metrics.loss = -119")
    assert [found.info.run_id for found in runs] == [child_id]
    # The lineage: the parent's checkpoint at step 100 is the fork's input.
    response = requests.get(
        f"{base_url}/api/v1/lineage",
        params={"run": child_id, "direction": "upstream"},
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    events = response.json()["events"]
    assert any(
        event["run_id"] == parent_id and event["type"] == "OUTPUT" and event["step"] == 100
        for event in events
    ), events
    client.delete_run(parent_id)
    assert len(client.get_metric_history(child_id, "loss")) == 120
    with pytest.raises(MlflowException) as refused:
        client.create_run(experiment.experiment_id, tags={"stepstore.fork_from_run_id": child_id})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
