"""Config flattening (no server needed), and a Hydra app recording its
composed config as a run's params."""

import argparse
import dataclasses
import os
import subprocess
import sys

import pytest

from stepstore import flatten_config

from conftest import run_info


def test_nested_dicts_lists_and_scalars():
    config = {
        "model": {"layers": [64, {"kind": "attn", "heads": 8}], "dropout": 0.1},
        "flags": {"amp": True, "compile": None},
        "name": "baseline",
        "empty": {},
    }
    assert flatten_config(config) == {
        "model.layers.0": "64",
        "model.layers.1.kind": "attn",
        "model.layers.1.heads": "8",
        "model.dropout": "0.1",
        "flags.amp": "True",
        "flags.compile": "None",
        "name": "baseline",
    }
    assert flatten_config(None) == {}


def test_dataclasses_and_argparse():
    @dataclasses.dataclass
    class Data:
        path: str = "/data"
        shards: list = dataclasses.field(default_factory=lambda: [1, 2])

    @dataclasses.dataclass
    class Train:
        lr: float = 3e-4
        data: Data = dataclasses.field(default_factory=Data)

    assert flatten_config(Train()) == {
        "lr": "0.0003",
        "data.path": "/data",
        "data.shards.0": "1",
        "data.shards.1": "2",
    }
    namespace = argparse.Namespace(epochs=3, train=Train(lr=0.1))
    assert flatten_config(namespace)["train.lr"] == "0.1"
    assert flatten_config(namespace)["epochs"] == "3"
    with pytest.raises(TypeError, match="config must be"):
        flatten_config(42)


def test_omegaconf_with_interpolation():
    omegaconf = pytest.importorskip("omegaconf")
    config = omegaconf.OmegaConf.create(
        {"base_lr": 0.1, "optim": {"lr": "${base_lr}", "betas": [0.9, 0.99]}}
    )
    assert flatten_config(config) == {
        "base_lr": "0.1",
        "optim.lr": "0.1",
        "optim.betas.0": "0.9",
        "optim.betas.1": "0.99",
    }


def test_a_hydra_app_records_its_composed_config(server_url, unique, tmp_path):
    pytest.importorskip("hydra")
    experiment = unique("hydra")
    app = os.path.join(os.path.dirname(__file__), "hydra_app", "train.py")
    done = subprocess.run(
        [
            sys.executable,
            app,
            f"hydra.run.dir={tmp_path}",
            "optimizer=sgd",
            "optimizer.lr=0.05",
            "trainer.epochs=2",
            f"+stepstore_url={server_url}",
            f"+experiment={experiment}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    info = run_info(server_url, run_id)
    params = info["params"]
    assert params["optimizer.name"] == "sgd"
    assert params["optimizer.lr"] == "0.05"
    assert params["optimizer.momentum"] == "0.9"
    assert params["trainer.epochs"] == "2"
    assert params["trainer.steps_per_epoch"] == "50"
    assert params["trainer.total_steps"] == "100", "interpolations are resolved"
    assert params["model.layers.0"] == "128"
    assert info["metrics"]["loss"]["count"] == 100
    assert info["status"] == "FINISHED"
