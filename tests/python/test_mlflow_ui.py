"""The official MLflow web UI, served by stepstore (`--mlflow-ui`), driven
in headless Chromium through the flows an MLflow user goes through:
experiments list, an experiment's runs table (columns, sorting, search),
a run's page and its charts, the chart view comparing runs, and a
1,000,000-step series whose one spike must reach the chart.

Each flow asserts on what the page shows and on the data its charts
received, that no request failed and no JavaScript error was logged, and
saves a screenshot. Run by tests/mlflow_ui.rs with:
STEPSTORE_URL (the server), MLFLOW_UI_VERSION (the UI's mlflow version),
STEPSTORE_SHOTS (where screenshots go) and MLFLOW_TRACKING_URI.
"""

import os
import time

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from browser import Browser, available

BASE = os.environ.get("STEPSTORE_URL", "").rstrip("/")
VERSION = os.environ.get("MLFLOW_UI_VERSION", "3")
MAJOR = int(VERSION.split(".")[0])
SHOTS = os.environ.get("STEPSTORE_SHOTS", "/tmp/stepstore-mlflow-ui")

SPIKE_STEPS = 1_000_000
SPIKE_AT = 777_777
SPIKE_VALUE = 1000.0
CURVE_STEPS = 50
FINAL_ACC = {"alpha": 0.95, "beta": 0.85, "gamma": 0.92}


def _check_environment():
    if not BASE:
        pytest.exit("STEPSTORE_URL is not set: tests/mlflow_ui.rs starts the server", returncode=2)
    missing = available()
    if missing:
        pytest.exit(missing, returncode=2)


def _ingest_spike_series(run_id):
    """1,000,000 steps of a smooth decaying curve with one spike."""
    chunk = 100_000
    for first in range(0, SPIKE_STEPS, chunk):
        steps = list(range(first, first + chunk))
        values = [SPIKE_VALUE if step == SPIKE_AT else 1.0 / (1.0 + step / 1000.0) for step in steps]
        timestamps = [1_700_000_000_000 + step for step in steps]
        body = {"batches": [{"run_id": run_id, "steps": steps, "timestamps": timestamps,
                             "values": {"loss": values}}]}
        response = requests.post(f"{BASE}/api/v1/ingest", json=body, timeout=120)
        assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def seeded():
    """Experiments from the mlflow client and the native API, and the spike."""
    _check_environment()
    import mlflow

    mlflow.set_tracking_uri(BASE)
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("mlflow-client-exp")
    runs = {}
    for index, name in enumerate(["alpha", "beta", "gamma"]):
        run = client.create_run(experiment_id, run_name=name, tags={"team": "vision"})
        run_id = run.info.run_id
        final = FINAL_ACC[name]
        metrics = []
        for step in range(CURVE_STEPS):
            fraction = step / (CURVE_STEPS - 1)
            metrics.append(mlflow.entities.Metric("acc", final * fraction, 1_700_000_000_000 + step, step))
            metrics.append(mlflow.entities.Metric("loss", 1.0 / (1 + step) + index, 1_700_000_000_000 + step, step))
        params = [mlflow.entities.Param("lr", f"0.0{index + 1}"), mlflow.entities.Param("batch_size", "64")]
        client.log_batch(run_id, metrics=metrics, params=params)
        client.set_terminated(run_id, "FINISHED" if name != "beta" else "FAILED")
        runs[name] = run_id

    native = requests.post(f"{BASE}/api/v1/runs", json={
        "experiment_name": "native-exp", "run_name": "native-run",
        "params": {"optimizer": {"name": "adam"}}, "tags": {"source": "native"}}, timeout=30).json()
    requests.post(f"{BASE}/api/v1/runs/{native['run_id']}/metrics",
                  json={"step": 1, "values": {"loss": 0.5}}, timeout=30).raise_for_status()

    spike = requests.post(f"{BASE}/api/v1/runs", json={
        "experiment_name": "spike-exp", "run_name": "spiky"}, timeout=30).json()
    _ingest_spike_series(spike["run_id"])
    return {
        "experiment_id": experiment_id,
        "runs": runs,
        "native_experiment_id": native["experiment_id"],
        "spike_experiment_id": spike["experiment_id"],
        "spike_run_id": spike["run_id"],
    }


@pytest.fixture(scope="module")
def browser(seeded):
    browser = Browser(BASE, SHOTS)
    browser.driver.set_window_size(2400, 1200)
    _BROWSER.append(browser)
    yield browser
    browser.close()


def _body(browser):
    return browser.driver.find_element(By.TAG_NAME, "body").text


def _open(browser, path):
    """Opens a page of the UI as a link would: a fresh page load (so no
    chart of the previous page is still being drawn)."""
    browser.collect()
    browser.driver.get("about:blank")
    browser.open("/#" + path)
    if MAJOR >= 3:
        _close_assistant(browser)


def _choose_model_training(browser):
    """MLflow 3 opens in its GenAI view; a user who trains models switches
    to "Model training" once (the choice is kept in local storage)."""
    toggle = browser.wait_for_css("body")[0].find_elements(
        By.XPATH, "//*[normalize-space(text())='Model training']")
    assert toggle, "no 'Model training' switch"
    toggle[0].click()


def _close_assistant(browser):
    """The assistant panel MLflow 3 opens on first use hides a third of the
    page; close it as a user would."""
    panels = browser.driver.find_elements(
        By.XPATH, "//*[normalize-space(text())='MLflow Assistant']/ancestor::*[.//button[@aria-label='Close']][1]")
    for panel in panels:
        for button in panel.find_elements(By.XPATH, ".//button[@aria-label='Close']"):
            if button.is_displayed():
                button.click()
                return


def _chart_data(browser):
    """The traces every Plotly chart on the page holds: name and x/y."""
    return browser.driver.execute_script(
        """
        return Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot =>
          (plot.data || []).map(trace => ({
            name: trace.name || '',
            x: Array.from(trace.x || []).map(Number),
            y: Array.from(trace.y || []).map(v => v === null ? null : Number(v)),
          })));
        """
    )


_BROWSER = []


def _wait(predicate, message, timeout=60):
    """Polls `predicate` until it holds; on timeout, saves a screenshot of
    the page and fails with `message`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    shot = _BROWSER[0].screenshot(f"timeout-{int(time.time())}") if _BROWSER else None
    raise AssertionError(f"{message} (screenshot: {shot})")


def _rows(browser):
    """The runs table's rows top to bottom: (run name, row parts). AG Grid
    splits a row into pinned and scrolling parts and orders rows by their
    `row-index`, not by their place in the document."""
    by_index = {}
    for row in browser.find(".ag-row"):
        index = row.get_attribute("row-index")
        if index is not None:
            by_index.setdefault(int(index), []).append(row)
    rows = []
    for index in sorted(by_index):
        parts = by_index[index]
        lines = "\n".join(part.text for part in parts).split("\n")
        name = next((n for n in FINAL_ACC if n in lines), None)
        if name:
            rows.append((name, parts))
    return rows


def _row_names(browser):
    """Run names in the runs table, top to bottom."""
    return [name for name, _ in _rows(browser)]


def _status_icons(browser):
    """Per run name, the drawing of the status icon in its row."""
    return {
        name: tuple(
            path.get_attribute("d")
            for part in parts
            for path in part.find_elements(By.CSS_SELECTOR, "[col-id='runDateAndNestInfo'] svg path")
        )
        for name, parts in _rows(browser)
    }


def test_1_experiments_list_shows_client_and_native_experiments(browser, seeded):
    # MLflow 3 lists experiments on their own page; MLflow 2 beside the
    # runs of the first one, at the root.
    _open(browser, "/experiments" if MAJOR >= 3 else "/")
    if MAJOR >= 3:
        _choose_model_training(browser)
    for name in ["mlflow-client-exp", "native-exp", "spike-exp"]:
        browser.wait_for_text(name)
    browser.screenshot("1-experiments")
    browser.assert_clean()


def test_2_runs_table_columns_sorting_and_search(browser, seeded):
    experiment_id = seeded["experiment_id"]
    _open(browser, f"/experiments/{experiment_id}")
    for name in FINAL_ACC:
        browser.wait_for_text(name)
    # Show the params and metrics columns (MLflow 3 hides them at first;
    # MLflow 2 shows them): tick them in the column chooser.
    headers = lambda: [h.text.strip().split("\n")[0] for h in browser.find(".ag-header-cell")]
    columns = browser.driver.find_element(By.XPATH, "//button[.//*[normalize-space(text())='Columns']]")
    columns.click()
    for key in ["acc", "loss", "lr", "batch_size"]:
        node = _wait(
            lambda: [e for e in browser.driver.find_elements(
                By.XPATH, f"//span[@title='{key}']/ancestor::*[contains(@class, 'tree-treenode')][1]")
                if e.is_displayed()],
            f"no column option {key}")[0]
        checkbox = node.find_element(By.CSS_SELECTOR, "[class*='tree-checkbox']")
        if "checked" not in (checkbox.get_attribute("class") or ""):
            node.find_element(By.XPATH, f".//span[@title='{key}']").click()
    browser.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    if [e for e in browser.find("[class*='tree-treenode']") if e.is_displayed()]:
        columns.click()
    _wait(lambda: not [e for e in browser.find("[class*='tree-treenode']") if e.is_displayed()],
          "the column chooser did not close")
    _wait(lambda: {"acc", "lr"} <= set(headers()), f"metric and param columns missing: {headers()}")
    body = _body(browser)
    for value in ["0.95", "0.85", "0.92", "0.01", "0.02", "64"]:
        assert value in body, f"{value} not shown in the runs table:\n{body}"
    # Statuses are icons beside the start time: the failed run's differs
    # from the finished ones'.
    icons = _status_icons(browser)
    assert icons["alpha"] == icons["gamma"] != icons["beta"], icons
    browser.screenshot("2-runs-table")

    # Sorting by a metric column: a click on its header orders the runs.
    searches = browser.mark()
    header = [h for h in browser.find(".ag-header-cell") if h.text.strip().split("\n")[0] == "acc"][0]
    header.click()
    def sorted_by_acc():
        names = _row_names(browser)
        if len(names) != 3:
            return False
        ascending = sorted(FINAL_ACC, key=FINAL_ACC.get)
        return names in (ascending, ascending[::-1])
    _wait(sorted_by_acc, f"runs not ordered by acc after a click on its header: {_row_names(browser)}")
    sort_requests = browser.server_requests("runs/search", since=searches)
    assert any("acc" in (r.post_data or "") for r in sort_requests) or len(sort_requests) == 0
    browser.screenshot("2-runs-table-sorted")

    # A search filter narrows the table.
    search = [e for e in browser.find("input") if "metrics." in (e.get_attribute("placeholder") or "")][0]
    search.clear()
    mark = browser.mark()
    search.send_keys("metrics.acc > 0.9", Keys.ENTER)
    browser.wait_for_request("runs/search", since=mark)
    _wait(lambda: sorted(_row_names(browser)) == ["alpha", "gamma"],
          f"the filter did not narrow the table: {_row_names(browser)}")
    filtered = [r for r in browser.server_requests("runs/search") if "metrics.acc > 0.9" in (r.post_data or "")]
    assert filtered, "no runs/search request carried the filter"
    answer = browser.response_json(filtered[-1])
    assert sorted(run["info"]["run_name"] for run in answer["runs"]) == ["alpha", "gamma"]
    browser.screenshot("2-runs-table-filtered")
    # Clearing the filter brings every run back (the UI keeps the filter
    # for the experiment's later views otherwise).
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.DELETE, Keys.ENTER)
    _wait(lambda: len(_row_names(browser)) == 3, f"clearing the filter: {_row_names(browser)}")
    browser.assert_clean()


def test_3_run_page_shows_params_tags_metrics_and_a_chart(browser, seeded):
    experiment_id, run_id = seeded["experiment_id"], seeded["runs"]["alpha"]
    _open(browser, f"/experiments/{experiment_id}/runs/{run_id}")
    browser.wait_for_text("alpha")
    for text in ["lr", "0.01", "batch_size", "team", "vision", "acc", "loss"]:
        browser.wait_for_text(text)
    browser.screenshot("3-run-page")
    if MAJOR == 2:
        # MLflow 2's metric page (a metric's name on the run page): every
        # point through paged get-history.
        mark = browser.mark()
        [link for link in browser.find("a") if link.text.strip() == "loss"][0].click()
        history = browser.wait_for_request("metrics/get-history?", since=mark)[-1]
        points = browser.response_json(history)["metrics"]
        assert [p["step"] for p in points] == list(range(CURVE_STEPS))
        _wait(lambda: [t for c in _chart_data(browser) for t in c if len(t["x"]) == CURVE_STEPS],
              "the metric page drew no 50-point curve")
        browser.screenshot("3-metric-page")

    mark = browser.mark()
    _open(browser, f"/experiments/{experiment_id}/runs/{run_id}/model-metrics")
    requests_ = browser.wait_for_request("get-history-bulk-interval", count=2, since=mark)
    loss = [r for r in requests_ if "metric_key=loss" in r.url][-1]
    points = browser.response_json(loss)["metrics"]
    assert len(points) == CURVE_STEPS, f"{len(points)} points for a {CURVE_STEPS}-step series"
    assert [p["step"] for p in points] == list(range(CURVE_STEPS))
    charts = _wait(lambda: [c for c in _chart_data(browser) if any(len(t["x"]) == CURVE_STEPS for t in c)],
                   "no chart drew the 50-point series")
    assert len(charts) >= 2, f"expected the acc and loss charts, got {len(charts)}"
    browser.screenshot("3-run-charts")
    browser.assert_clean()


def test_4_chart_view_draws_one_line_per_run(browser, seeded):
    experiment_id = seeded["experiment_id"]
    mark = browser.mark()
    _open(browser, f"/experiments/{experiment_id}/runs?compareRunsMode=CHART")
    intervals = browser.wait_for_request("get-history-bulk-interval", count=2, since=mark)
    loss = [r for r in intervals if "metric_key=loss" in r.url][-1]
    answer = browser.response_json(loss)["metrics"]
    assert {p["run_id"] for p in answer} == set(seeded["runs"].values())

    def loss_chart():
        # The loss chart: one 50-point line per run, gamma's starting at
        # 1/(1+0) + 2.
        for chart in _chart_data(browser):
            lines = {t["name"]: t for t in chart if len(t["x"]) == CURVE_STEPS}
            if set(FINAL_ACC) <= set(lines) and lines["gamma"]["y"][0] == 3.0:
                return chart
        return None

    _wait(loss_chart, f"no loss chart with one line per run: {[[t['name'] for t in c] for c in _chart_data(browser)]}")
    browser.screenshot("4-compare-charts")
    browser.assert_clean()


def test_5_a_single_spike_in_a_million_steps_reaches_the_chart(browser, seeded):
    experiment_id, run_id = seeded["spike_experiment_id"], seeded["spike_run_id"]
    mark = browser.mark()
    _open(browser, f"/experiments/{experiment_id}/runs/{run_id}/model-metrics")
    request = browser.wait_for_request("get-history-bulk-interval", since=mark)[-1]
    points = browser.response_json(request)["metrics"]
    max_results = int(request.url.split("max_results=")[1].split("&")[0])
    assert len(points) <= max_results
    assert points[0]["step"] == 0 and points[-1]["step"] == SPIKE_STEPS - 1
    assert any(p["step"] == SPIKE_AT and p["value"] == SPIKE_VALUE for p in points), \
        "the spike is not in the data the chart received"
    chart = _wait(lambda: [t for c in _chart_data(browser) for t in c if SPIKE_AT in t["x"]],
                  "no chart trace holds the spike's step")
    index = chart[0]["x"].index(SPIKE_AT)
    assert chart[0]["y"][index] == SPIKE_VALUE
    browser.screenshot("5-spike")
    browser.assert_clean()
