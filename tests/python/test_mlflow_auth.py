"""The official MLflow client against a stepstore server with
`--auth required`: a token in MLFLOW_TRACKING_TOKEN (Bearer) or as
MLFLOW_TRACKING_PASSWORD (Basic, any user name) is all it needs; a missing
or bad token, or one without the scope, raises MlflowException with
UNAUTHENTICATED (401) or PERMISSION_DENIED (403). Run by tests/auth.rs
with STEPSTORE_URL, STEPSTORE_WRITE_TOKEN and STEPSTORE_READ_TOKEN.
"""

import os

import mlflow
import pytest
from mlflow.exceptions import MlflowException

URL = os.environ["STEPSTORE_URL"]
WRITE = os.environ["STEPSTORE_WRITE_TOKEN"]
READ = os.environ["STEPSTORE_READ_TOKEN"]

CREDENTIALS = ["MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]


@pytest.fixture(autouse=True)
def clean_credentials(monkeypatch):
    for name in CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(URL)
    yield


def _log_a_run(name):
    mlflow.set_experiment("auth-client")
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params({"lr": 0.1})
        mlflow.log_metrics({"loss": 0.5}, step=1)
        mlflow.set_tag("who", name)
    return run.info.run_id


def test_bearer_token_works_unchanged(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", WRITE)
    run_id = _log_a_run("bearer")
    history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]


def test_basic_credentials_with_the_token_as_password(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "trainer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", WRITE)
    run_id = _log_a_run("basic")
    assert mlflow.get_run(run_id).data.tags["who"] == "basic"


def test_no_or_bad_credentials_raise_unauthenticated(monkeypatch):
    with pytest.raises(MlflowException) as raised:
        mlflow.search_experiments()
    assert raised.value.error_code == "UNAUTHENTICATED"
    assert raised.value.get_http_status_code() == 401
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "stepstore_000000000000_wrong")
    with pytest.raises(MlflowException) as raised:
        mlflow.search_experiments()
    assert raised.value.error_code == "UNAUTHENTICATED"


def test_a_read_token_reads_and_is_denied_writes(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", READ)
    names = [experiment.name for experiment in mlflow.search_experiments()]
    assert "Default" in names
    with pytest.raises(MlflowException) as raised:
        mlflow.MlflowClient().create_experiment("not-allowed")
    assert raised.value.error_code == "PERMISSION_DENIED"
    assert raised.value.get_http_status_code() == 403
