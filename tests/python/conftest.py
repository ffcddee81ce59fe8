"""Shared fixtures for the tests that drive the official MLflow client against a
running stepstore server (its URL in MLFLOW_TRACKING_URI)."""

import os
import uuid

import pytest


def _tracking_uri():
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        pytest.exit(
            "MLFLOW_TRACKING_URI is not set: these tests need a running stepstore server "
            "(cargo test --test mlflow_client starts one; see ./scripts/test.sh)",
            returncode=2,
        )
    return uri.rstrip("/")


@pytest.fixture(scope="session")
def base_url():
    """The server's base URL, for direct HTTP requests."""
    return _tracking_uri()


@pytest.fixture(scope="session", autouse=True)
def _configure_mlflow():
    import mlflow

    mlflow.set_tracking_uri(_tracking_uri())
    yield


@pytest.fixture(autouse=True)
def _no_active_run_left():
    """Every test starts and ends without an active run."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    yield
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def client():
    from mlflow import MlflowClient

    return MlflowClient()


@pytest.fixture
def unique_name():
    """Returns a function giving a fresh, unique name with a readable prefix."""

    def make(prefix="exp"):
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def experiment(unique_name):
    """A fresh experiment set as the active one."""
    import mlflow

    return mlflow.set_experiment(unique_name("test"))
