"""The client against a real server: logging in both transports, params and
tags, run endings, resume, retries, lost answers, the spool and its sync,
the buffer policies and system metrics."""

import math
import os
import subprocess
import sys
import textwrap
import time

import pytest

import stepstore
from stepstore import _columns

from conftest import run_info, series

try:
    import pyarrow  # noqa: F401

    HAVE_ARROW = True
except ImportError:
    HAVE_ARROW = False

TRANSPORTS = [
    pytest.param("arrow", marks=pytest.mark.skipif(not HAVE_ARROW, reason="no pyarrow here")),
    "json",
]


def test_the_transport_follows_pyarrow(server_url, unique):
    run = stepstore.init(experiment=unique("client"), url=server_url)
    assert run.transport == ("arrow" if HAVE_ARROW else "json")
    run.finish()
    if not HAVE_ARROW:
        with pytest.raises(ImportError, match="pyarrow"):
            stepstore.init(url=server_url, transport="arrow")


def expected_value(step, key_index):
    return step * 0.5 + key_index / 1000.0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_points_arrive_exactly_in_both_transports(server_url, unique, transport):
    keys = [f"train/k{index}" for index in range(7)]
    run = stepstore.init(
        experiment=unique("client"), name="exact", url=server_url, transport=transport
    )
    assert run.transport == transport
    for step in range(3000):
        run.log({key: expected_value(step, index) for index, key in enumerate(keys)})
    # Non-finite values, -0.0, explicit steps and timestamps, numpy-like
    # values (anything with __float__), ints and bools.
    run.log({"special": float("nan")}, step=10, timestamp=1_700_000_000_000)
    run.log({"special": float("inf")}, step=11)
    run.log({"special": float("-inf")}, step=12)
    run.log({"special": -0.0}, step=13)
    run.log({"special": 7}, step=14)
    run.log({"special": True}, step=15)

    class Tensor:  # what torch and numpy scalars look like to the client
        def __float__(self):
            return 2.5

    run.log({"special": Tensor()}, step=16)
    extra_steps, extra_values = [], []
    try:
        import numpy
    except ImportError:  # the bare interpreter of the tests has no numpy
        numpy = None
    if numpy is not None:
        run.log({"special": numpy.float32(0.25)}, step=numpy.int64(17))
        run.log({"special": numpy.int64(-3)}, step=18)
        extra_steps, extra_values = [17, 18], [0.25, -3.0]
    assert run.step == 17 + len(extra_steps)
    run.finish()
    stats = run.stats()
    assert stats["sent"] == 3000 * 7 + 7 + len(extra_steps), stats
    assert stats["pending"] == stats["spooled"] == stats["dropped"] == stats["failed"] == 0
    info = run_info(server_url, run.id)
    assert info["status"] == "FINISHED"
    for index, key in enumerate(keys):
        steps, values = series(server_url, run.id, key)
        assert steps == list(range(3000))
        assert values == [expected_value(step, index) for step in range(3000)]
    steps, values = series(server_url, run.id, "special")
    assert steps == [10, 11, 12, 13, 14, 15, 16] + extra_steps
    assert math.isnan(values[0])
    assert values[1:3] == [math.inf, -math.inf]
    assert values[3] == 0.0 and math.copysign(1.0, values[3]) == -1.0
    assert values[4:] == [7.0, 1.0, 2.5] + extra_values


def test_changing_key_sets_and_bad_values(server_url, unique):
    run = stepstore.init(experiment=unique("client"), url=server_url)
    for step in range(100):
        data = {"loss": float(step)}
        if step % 10 == 0:
            data["eval/acc"] = step / 100
        run.log(data)
        if step % 25 == 0:
            run.log({"lr": 0.1}, step=step)
    with pytest.raises(TypeError, match="'bad'.*str"):
        run.log({"loss": 1.0, "bad": "text"}, step=500)
    with pytest.raises(TypeError, match="'bad'.*str"):
        run.log({"loss": 1.0, "bad": "1.5"}, step=500)  # numbers, not their text
    with pytest.raises(TypeError, match="'bad'"):
        run.log({"loss": 1.0, "bad": None}, step=500)
    with pytest.raises(TypeError, match="non-empty strings"):
        run.log({3: 1.0}, step=501)
    run.log({}, step=502)  # nothing to log
    run.finish()
    assert series(server_url, run.id, "loss") == (list(range(100)), [float(s) for s in range(100)])
    assert series(server_url, run.id, "eval/acc")[0] == list(range(0, 100, 10))
    assert series(server_url, run.id, "lr")[0] == [0, 25, 50, 75]
    # The refused call stored nothing of its row.
    assert "bad" not in run_info(server_url, run.id)["metrics"]
    assert run_info(server_url, run.id)["metrics"]["loss"]["count"] == 100


def test_config_params_tags_and_identity(server_url, unique):
    import argparse
    import dataclasses

    @dataclasses.dataclass
    class Optim:
        name: str = "adam"
        betas: tuple = (0.9, 0.999)

    @dataclasses.dataclass
    class Config:
        lr: float = 0.001
        optim: Optim = dataclasses.field(default_factory=Optim)

    experiment = unique("client")
    run = stepstore.init(
        experiment=experiment,
        name="configured",
        config=Config(),
        tags={"team": "vision", "priority": 2},
        url=server_url,
    )
    run.log_params(argparse.Namespace(seed=7, data={"path": "/d", "shards": [1, 2]}))
    run.set_tags({"stage": "tuning"})
    with pytest.raises(stepstore.StepstoreError) as conflict:
        run.log_params({"seed": 8})
    assert conflict.value.status == 409
    run.finish()
    info = run_info(server_url, run.id)
    assert info["run_name"] == "configured" == run.name
    assert info["params"] == {
        "lr": "0.001",
        "optim.name": "adam",
        "optim.betas.0": "0.9",
        "optim.betas.1": "0.999",
        "seed": "7",
        "data.path": "/d",
        "data.shards.0": "1",
        "data.shards.1": "2",
    }
    assert info["tags"]["team"] == "vision"
    assert info["tags"]["priority"] == "2"
    assert info["tags"]["stage"] == "tuning"
    assert run.run_url.startswith(f"{server_url}/ui/?")
    assert f"run={run.id}" in run.run_url and f"exp={run.experiment_id}" in run.run_url


def test_context_manager_and_module_functions(server_url, unique):
    with pytest.raises(ZeroDivisionError):
        with stepstore.init(experiment=unique("client"), url=server_url) as failing:
            failing.log({"x": 1.0})
            raise ZeroDivisionError("the training step failed")
    assert run_info(server_url, failing.id)["status"] == "FAILED"
    with stepstore.init(experiment=unique("client"), url=server_url) as run:
        assert stepstore.current() is run
        stepstore.log({"x": 2.0})
        stepstore.log({"x": 3.0})
    assert stepstore.current() is None
    assert run_info(server_url, run.id)["status"] == "FINISHED"
    assert series(server_url, run.id, "x") == ([0, 1], [2.0, 3.0])
    with pytest.raises(RuntimeError, match="finished"):
        run.log({"x": 4.0})


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, stepstore
    run = stepstore.init(experiment=sys.argv[2], url=sys.argv[1])
    print(run.id, flush=True)
    for step in range(5000):
        run.log({"loss": step * 1.0, "acc": step / 5000})
    how = sys.argv[3]
    if how == "raise":
        raise RuntimeError("the trainer crashed")
    if how == "interrupt":
        raise KeyboardInterrupt
    if how == "exit1":
        sys.exit(1)
    """
)


@pytest.mark.parametrize(
    "how,status", [("return", "FINISHED"), ("raise", "FAILED"), ("interrupt", "KILLED")]
)
def test_interpreter_exit_finishes_the_run_with_every_point(
    server_url, unique, scratch, how, status
):
    script = os.path.join(scratch, "train.py")
    with open(script, "w") as out:
        out.write(EXIT_SCRIPT)
    done = subprocess.run(
        [sys.executable, script, server_url, unique("exit"), how],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    run_id = done.stdout.split()[0]
    info = run_info(server_url, run_id)
    assert info["status"] == status, done.stderr
    assert info["metrics"]["loss"]["count"] == 5000
    assert info["metrics"]["acc"]["count"] == 5000


def test_a_run_resumed_by_id_continues_its_steps(server_url, unique):
    run = stepstore.init(experiment=unique("client"), url=server_url)
    for _ in range(50):
        run.log({"loss": 1.0})
    run.finish("KILLED")
    resumed = stepstore.Run(run.id, url=server_url)
    assert resumed.step == 50
    assert run_info(server_url, run.id)["status"] == "RUNNING"
    resumed.log({"loss": 0.5})
    resumed.finish()
    assert series(server_url, run.id, "loss")[0] == list(range(51))
    assert run_info(server_url, run.id)["status"] == "FINISHED"


def test_a_preempted_run_resumes_from_its_checkpoint(server_url, unique):
    run = stepstore.init(experiment=unique("client"), url=server_url)
    for step in range(213):
        run.log({"loss": float(step)})
    run.finish("KILLED")
    # The restarted job loads its checkpoint of step 200.
    resumed = stepstore.Run(run.id, url=server_url)
    assert resumed.step == 213
    resumed.rewind(200)
    assert resumed.step == 201
    for _ in range(20):
        resumed.log({"loss": -1.0})
    resumed.finish()
    steps, values = series(server_url, run.id, "loss")
    assert steps == list(range(221)), "each step once"
    assert values[200] == 200.0 and values[201:] == [-1.0] * 20
    info = run_info(server_url, run.id)
    assert [rewind["step"] for rewind in info["rewinds"]] == [200]
    assert info["metrics"]["loss"]["count"] == 221


def test_a_run_forks_from_another_at_a_step(server_url, unique):
    parent = stepstore.init(
        experiment=unique("client"), config={"lr": 0.1, "depth": 4}, url=server_url
    )
    for step in range(50):
        parent.log({"loss": float(step)})
    parent.finish()
    # A trial of a sweep starts from the parent's checkpoint at step 30.
    child = stepstore.init(config={"lr": 0.01}, fork_from=(parent.id, 30), url=server_url)
    assert child.experiment_id == parent.experiment_id
    assert child.step == 31
    for _ in range(10):
        child.log({"loss": -1.0})
    child.finish()
    steps, values = series(server_url, child.id, "loss")
    assert steps == list(range(41))
    assert values[30] == 30.0 and values[31:] == [-1.0] * 10
    info = run_info(server_url, child.id)
    assert info["forked_from"]["run_id"] == parent.id and info["forked_from"]["step"] == 30
    assert info["params"] == {"lr": "0.01", "depth": "4"}
    assert series(server_url, parent.id, "loss")[0] == list(range(50)), "the parent is unchanged"
    with pytest.raises(TypeError):
        stepstore.init(fork_from=(parent.id, "30"), url=server_url)


def test_503_is_retried_after_retry_after(proxy, unique):
    run = stepstore.init(experiment=unique("client"), url=proxy.url, flush_interval=0.1)
    proxy.mode = "unavailable"
    for step in range(1000):
        run.log({"loss": float(step)})
    assert proxy.wait_for_ingests(3), "the batch was tried again"
    assert run.stats()["sent"] == 0 and run.stats()["retries"] >= 2
    proxy.mode = "forward"
    assert run.flush(timeout=30)
    run.finish()
    assert run.stats()["sent"] == 1000
    assert series(proxy.url, run.id, "loss")[0] == list(range(1000))


def test_lost_answers_are_sent_again_and_stored_once(proxy, unique):
    run = stepstore.init(experiment=unique("client"), url=proxy.url, flush_interval=0.1)
    proxy.mode = "lose_answers"
    for step in range(2000):
        run.log({"loss": float(step)})
    assert proxy.wait_for_ingests(3)
    proxy.mode = "forward"
    assert run.flush(timeout=30)
    run.finish()
    # The same batch reached the server several times, with one key.
    keys = [key for key in proxy.ingest_keys if key]
    assert len(keys) > len(set(keys)), keys
    assert series(proxy.url, run.id, "loss")[0] == list(range(2000))


def test_spool_while_the_server_is_down_then_sync_without_duplicates(proxy, unique, tmp_path):
    spool_dir = tmp_path / "spool"
    run = stepstore.init(
        experiment=unique("client"),
        url=proxy.url,
        flush_interval=0.1,
        spool_after=0.5,
    )
    for step in range(500):
        run.log({"loss": float(step)})
    assert run.flush(timeout=30)
    # Lost answers first (stored, not acknowledged), then no server at all.
    proxy.mode = "lose_answers"
    for step in range(500, 1000):
        run.log({"loss": float(step)})
    assert proxy.wait_for_ingests(3)
    proxy.down()
    for step in range(1000, 3000):
        run.log({"loss": float(step)})
        if step % 500 == 0:
            time.sleep(0.2)
    run.finish()
    stats = run.stats()
    assert stats["spooled"] == 2500, stats
    assert stats["sent"] == 500, stats
    spooled = sorted(path.name for path in (spool_dir / run.id).iterdir())
    assert len(spooled) >= 2  # metric batches, then the status update
    # The run is still RUNNING on the server: its end is spooled too.
    proxy.mode = "forward"
    proxy.up()
    assert run_info(proxy.url, run.id)["status"] == "RUNNING"
    done = subprocess.run(
        [sys.executable, "-m", "stepstore", "sync", "--spool-dir", str(spool_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 left" in done.stdout
    assert not (spool_dir / run.id).exists()
    steps, values = series(proxy.url, run.id, "loss")
    assert steps == list(range(3000)), "every point once: the lost answers' batch too"
    assert values == [float(step) for step in range(3000)]
    assert run_info(proxy.url, run.id)["status"] == "FINISHED"
    # Sync again: nothing left, nothing doubled.
    again = stepstore.sync(spool_dir)
    assert again == (0, 0, 0)


def test_the_sender_sends_its_spool_when_the_server_comes_back(private_server, unique):
    run = stepstore.init(
        experiment=unique("client"),
        url=private_server.url,
        flush_interval=0.1,
        spool_after=0.3,
    )
    run.log({"loss": 0.0})
    assert run.flush(timeout=30)
    private_server.kill()
    for step in range(1, 1001):
        run.log({"loss": float(step)})
    deadline = time.monotonic() + 20
    while run.stats()["spooled"] < 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.stats()["spooled"] == 1000, run.stats()
    private_server.start()
    for step in range(1001, 1101):
        run.log({"loss": float(step)})
    assert run.flush(timeout=30)
    deadline = time.monotonic() + 20
    while run.stats()["spooled"] and time.monotonic() < deadline:
        run.flush(timeout=5)
    run.finish()
    assert run.stats()["spooled"] == 0, run.stats()
    assert series(private_server.url, run.id, "loss")[0] == list(range(1101))
    assert run_info(private_server.url, run.id)["status"] == "FINISHED"


def test_a_full_buffer_blocks_by_default_and_drops_when_asked(proxy, unique):
    proxy.mode = "unavailable"
    blocking = stepstore.init(
        experiment=unique("client"),
        url=proxy.url,
        max_pending_points=100,
        batch_points=50,
        flush_interval=0.05,
    )

    def release():
        time.sleep(1.0)
        proxy.mode = "forward"

    import threading

    threading.Thread(target=release, daemon=True).start()
    started = time.monotonic()
    for _ in range(1000):
        blocking.log({"a": 1.0, "b": 2.0})
    assert time.monotonic() - started > 0.5, "log() waited for room"
    blocking.finish()
    assert blocking.stats()["dropped"] == 0
    assert blocking.stats()["blocked_seconds"] > 0.5
    assert run_info(proxy.url, blocking.id)["metrics"]["a"]["count"] == 1000

    proxy.mode = "unavailable"
    dropping = stepstore.init(
        experiment=unique("client"),
        url=proxy.url,
        max_pending_points=100,
        batch_points=50,
        flush_interval=0.05,
        on_full="drop",
    )
    for _ in range(1000):
        dropping.log({"a": 1.0, "b": 2.0})
    stats = dropping.stats()
    assert stats["dropped"] > 0, stats
    proxy.mode = "forward"
    dropping.finish()
    stats = dropping.stats()
    stored = run_info(proxy.url, dropping.id)["metrics"]["a"]["count"]
    assert stored * 2 + stats["dropped"] == 2000, (stored, stats)


def test_system_metrics_with_a_gpu(server_url, unique, scratch, monkeypatch):
    # A stand-in for nvidia-smi with two GPUs, answering its CSV query.
    fake = os.path.join(scratch, "nvidia-smi")
    with open(fake, "w") as out:
        out.write("#!/bin/sh\necho '37, 1024, 4096'\necho '80, 2048, 8192'\n")
    os.chmod(fake, 0o755)
    monkeypatch.setenv("PATH", scratch + os.pathsep + os.environ["PATH"])
    run = stepstore.init(
        experiment=unique("client"),
        url=server_url,
        system_metrics=True,
        system_metrics_interval=0.1,
    )
    for _ in range(20):
        run.log({"loss": 1.0})
        time.sleep(0.03)
    time.sleep(0.5)
    run.finish()
    metrics = run_info(server_url, run.id)["metrics"]
    assert metrics["loss"]["count"] == 20
    assert series(server_url, run.id, "loss")[0] == list(range(20)), (
        "system samples keep their own steps"
    )
    for key in ["system/cpu_percent", "system/memory_percent", "system/process_rss_mb"]:
        assert metrics[key]["count"] >= 2, key
        assert 0 <= metrics[key]["value"], key
    assert metrics["system/gpu.0.utilization_percent"]["value"] == 37.0
    assert metrics["system/gpu.1.memory_percent"]["value"] == 25.0
    assert metrics["system/gpu.1.memory_used_mb"]["value"] == 2048.0


def test_tokens_from_the_argument_or_the_environment(server_with_auth, unique, monkeypatch):
    url = server_with_auth.url
    with pytest.raises(stepstore.StepstoreError) as refused:
        stepstore.init(experiment=unique("auth"), url=url)
    assert refused.value.status == 401
    run = stepstore.init(experiment=unique("auth"), url=url, token=server_with_auth.token)
    run.log({"loss": 1.0})
    run.finish()
    assert run.stats()["sent"] == 1
    monkeypatch.setenv("STEPSTORE_TOKEN", server_with_auth.token)
    monkeypatch.setenv("STEPSTORE_URL", url)
    with stepstore.init(experiment=unique("auth")) as from_env:
        from_env.log({"loss": 2.0})
    assert from_env.stats()["sent"] == 1
    assert from_env.url == url


def test_an_unreachable_server_at_start_is_a_clear_error(unique):
    from conftest import free_port

    with pytest.raises(stepstore.ServerUnreachable, match="127.0.0.1"):
        stepstore.init(experiment=unique("down"), url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ValueError, match="server URL"):
        stepstore.init(url="localhost:5000")
    with pytest.raises(TypeError, match="unknown option"):
        stepstore.init(url="http://127.0.0.1:9", flush_every=3)


def test_batches_are_cut_by_points_without_splitting_rows():
    segment = _columns.Segment(("a", "b", "c"))
    for step in range(10):
        segment.steps.append(step)
        segment.times.append(step)
        segment.values.extend([step, step + 0.1, step + 0.2])
    other = _columns.Segment(("z",))
    for step in range(4):
        other.steps.append(step)
        other.times.append(step)
        other.values.append(float(step))
    batches = _columns.take_batches([segment, other], 7)
    sizes = [[part.points for part in batch] for batch in batches]
    assert all(sum(batch) <= 7 for batch in sizes), sizes
    assert sum(sum(batch) for batch in sizes) == 34
    parts = [part for batch in batches for part in batch if part.keys == ("a", "b", "c")]
    assert sum((list(part.steps()) for part in parts), []) == list(range(10))
    assert sum((list(part.column(1)) for part in parts), []) == [s + 0.1 for s in range(10)]
    with pytest.raises(ValueError, match="batch_points"):
        stepstore.init(url="http://127.0.0.1:9", batch_points=2_000_000)
