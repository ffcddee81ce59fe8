"""The dashboard at /ui in headless Chromium: every feature of the page,
asserting on the DOM and on the data the charts received (the request the
page sent, the body the server answered, and what each chart holds), with
no failed request, no request outside the server and no JavaScript error.
Screenshots go to $STEPSTORE_SHOTS.

Run by tests/dashboard.rs, which starts a server and sets STEPSTORE_URL.
Waits are on conditions (a request completed, a chart drawn, a text shown),
never on fixed delays.
"""

import json
import os
import time
from urllib.parse import parse_qs, urlparse

import dashboard_data
import pyarrow
import pyarrow.ipc
import pytest
from browser import Browser
from dashboard_data import SPIKE_STEP, SPIKE_VALUE
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

BASE = os.environ.get("STEPSTORE_URL", "").rstrip("/")
SHOTS = os.environ.get("STEPSTORE_SHOTS", "dashboard-shots")
TIMEOUT = 60

if not BASE:
    pytest.skip(
        "STEPSTORE_URL is not set: run through `cargo test --test dashboard`",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server():
    return dashboard_data.Server(BASE)


@pytest.fixture(scope="module")
def data(server):
    seeded = dashboard_data.seed_tests(server)
    seeded["wide"] = dashboard_data.seed_wide(server, runs=100, params=2000, metrics=20)
    seeded["experiments"] = {
        experiment["name"]: experiment["experiment_id"]
        for experiment in server.get("/api/v1/experiments")["experiments"]
    }
    return seeded


@pytest.fixture(scope="module")
def browser():
    browser = Browser(BASE, SHOTS)
    yield browser
    browser.close()


def wait(condition, message, timeout=TIMEOUT):
    """Polls `condition` until it returns something true; returns it."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(0.1)


def script(browser, code, *args):
    return browser.driver.execute_script(code, *args)


def charts(browser):
    return {
        chart["key"]: chart for chart in script(browser, "return window.stepstore.charts.charts()")
    }


def settled(browser, keys):
    """Waits until the charts for `keys` are all drawn with their latest read."""

    def ready():
        state = script(
            browser,
            "const v = window.stepstore && window.stepstore.views.charts;"
            "return v ? {busy: v.inflight.size, charts: window.stepstore.charts.charts()} : null",
        )
        if not state or state["busy"]:
            return None
        current = {chart["key"]: chart for chart in state["charts"]}
        if set(current) != set(keys) or any(not chart["draws"] for chart in current.values()):
            return None
        return current

    return wait(ready, f"charts {keys} to be drawn")


def scalar_requests(browser, since):
    """Completed scalar reads after `since`: (request, body sent)."""
    return [
        (request, json.loads(request.post_data))
        for request in browser.server_requests("/api/v1/scalars", since)
        if request.status
    ]


def plot_point(browser, key, x, y):
    """Client offsets (from the plot area's center) of the value (x, y) on `key`'s chart."""
    return script(
        browser,
        """const plot = window.stepstore.views.charts.charts.get(arguments[0]).plot;
        return [plot.valToPos(arguments[1], 'x') - plot.over.clientWidth / 2,
                plot.valToPos(arguments[2], 'y') - plot.over.clientHeight / 2];""",
        key,
        x,
        y,
    )


def over(browser, key):
    return browser.driver.find_element(By.CSS_SELECTOR, f'.chart-card[data-key="{key}"] .u-over')


def drag(browser, key, start, end):
    """Drags across `key`'s chart from fraction `start` to `end` of its width."""
    element = over(browser, key)
    width = element.size["width"]
    ActionChains(browser.driver).move_to_element_with_offset(
        element, int(width * (start - 0.5)), 0
    ).click_and_hold().move_by_offset(int(width * (end - start)), 0).release().perform()


def open_view(browser, query):
    browser.open(f"/ui/?{query}")


CHECKED = "return document.querySelector(`[data-select='${arguments[0]}']`).checked"


def click(browser, css):
    """Clicks the element `css` names, found and clicked at once: the
    virtualized grid and the sidebar redraw their elements at any time."""
    script(browser, "document.querySelector(arguments[0]).click()", css)


def scroll_to_column(browser, column):
    """Scrolls the runs table sideways until `column` is in view."""
    script(
        browser,
        """const grid = window.stepstore.views.runs.grid;
        const index = grid.columns.findIndex((c) => c.id === arguments[0]);
        grid.root.scrollLeft = grid.offsets[index] - grid.frozenWidth;""",
        column,
    )
    wait(lambda: browser.find(f'[data-sort="{column}"]'), f"the {column} column in view")


def rows(browser, scope="#view-runs"):
    """The first cell's text of each row in view (read at once: the grid redraws its rows)."""
    return script(
        browser,
        "return Array.from(document.querySelectorAll(arguments[0] + ' .grid-row'), (row) => row.innerText.split('\\n')[0].trim())",
        scope,
    )


def cell(browser, run_id, column):
    """The text of a run's cell in the runs table."""
    return script(
        browser,
        """const grid = window.stepstore.views.runs.grid;
        const index = grid.columns.findIndex((c) => c.id === arguments[1]);
        const box = document.querySelector(`[data-select="${arguments[0]}"]`);
        return box.closest('.grid-row').querySelector(`[data-col="${index}"]`).innerText;""",
        run_id,
        column,
    )


def test_experiments_and_runs_table(browser, data):
    mark = browser.mark()
    open_view(browser, "")
    browser.wait_for_text("sweep")
    for name in ("spikes", "wide"):
        assert name in browser.find("#experiments")[0].text
    click(browser, f'[data-experiment="{data["experiments"]["sweep"]}"]')
    wait(lambda: len(rows(browser)) == 6, "six runs")
    header = browser.find(".grid-head")[0].text
    for column in ("Run", "Status", "Started", "Duration", "train/loss", "eval/acc"):
        assert column in header, f"{column} missing from {header!r}"
    columns = script(browser, "return window.stepstore.views.runs.columns.map((c) => c.id)")
    for column in (
        "metrics.train/loss",
        "metrics.lr",
        "params.optimizer.lr",
        "params.optimizer.betas.b1",
        "params.seed",
    ):
        assert column in columns, f"{column} missing from {columns}"
    # The latest value of a metric is in the table, as the server has it.
    run = data["sweep"][0]
    latest = browser.server_requests("runs/search", mark)[-1]
    body = browser.response_json(latest)
    expected = {
        m["key"]: m["value"]
        for r in body["runs"]
        if r["info"]["run_id"] == run
        for m in r["data"]["metrics"]
    }
    shown = float(cell(browser, run, "metrics.train/loss"))
    assert abs(shown - expected["train/loss"]) < 1e-5 * max(1, abs(shown))

    # Sort by a param (scrolled into view): numerically, then the other way.
    scroll_to_column(browser, "params.optimizer.lr")
    click(browser, '[data-sort="params.optimizer.lr"]')
    wait(lambda: rows(browser)[0] == "lr=0.0003 bs=128", "ascending lr")
    click(browser, '[data-sort="params.optimizer.lr"]')
    wait(lambda: rows(browser)[0] == "lr=0.1 bs=32", "descending lr")
    assert "sort=params.optimizer.lr:desc" in browser.driver.current_url.replace("%3A", ":")

    # MLflow's filter grammar, evaluated by the server.
    box = browser.find(".filter-input")[0]
    box.send_keys("params.`data.batch_size` = '64' and metrics.`train/loss` < 1", Keys.ENTER)
    wait(lambda: sorted(rows(browser)) == ["lr=0.003 bs=64", "lr=0.01 bs=64"], "the filtered runs")
    assert "2 runs" in browser.find(".run-count")[0].text
    box.clear()
    box.send_keys(Keys.ENTER)
    wait(lambda: len(rows(browser)) == 6, "all runs again")

    # Select three runs: colors in the table, the count in the toolbar.
    for index in (0, 2, 4):
        run = data["sweep"][index]
        click(browser, f'[data-select="{run}"]')
        wait(lambda run=run: script(browser, CHECKED, run), f"{run} checked")
    assert browser.find(".selection-info")[0].text == "3 selected"
    assert parse_qs(urlparse(browser.driver.current_url).query)["runs"][0].split(",") == [
        data["sweep"][i] for i in (0, 2, 4)
    ]
    script(browser, "window.stepstore.views.runs.grid.root.scrollLeft = 0")
    wait(lambda: "Status" in browser.find(".grid-head")[0].text, "the first columns again")
    browser.screenshot("runs-table")
    browser.assert_clean()


def test_thousands_of_columns_stay_virtualized(browser, data):
    open_view(browser, f"exp={data['experiments']['wide']}")
    wait(
        lambda: browser.find(".run-count") and "100 runs" in browser.find(".run-count")[0].text,
        "100 runs",
    )
    assert any(b.text == "Columns (2,020)" for b in browser.find("button"))
    drawn = script(
        browser, "return performance.getEntriesByName('runs', 'measure').at(-1).duration"
    )
    assert drawn < 5000, f"the table took {drawn} ms"
    # 100 runs x 2,025 columns, but only the cells in view are in the DOM.
    cells = len(browser.find(".grid-cell"))
    assert 0 < cells < 2500, cells
    grid = browser.find(".grid")[0]
    script(
        browser,
        "arguments[0].scrollLeft = arguments[0].scrollWidth; arguments[0].scrollTop = arguments[0].scrollHeight",
        grid,
    )
    wait(lambda: "p1999" in browser.find(".grid-head")[0].text, "the last param column")
    wait(lambda: "wide-0000" in browser.find(".grid-body")[0].text, "the last row")
    assert len(browser.find(".grid-cell")) < 2500

    # Column chooser: hide the params matching a search, then show them again.
    chooser = next(b for b in browser.find("button") if b.text.startswith("Columns"))
    chooser.click()
    search = browser.find(".columns-panel input[type=search]")[0]
    search.send_keys("p19")
    wait(lambda: "Params (100)" in browser.find(".column-lists")[0].text, "100 matching params")
    next(b for b in browser.find(".columns-panel button") if b.text == "Hide all").click()
    wait(lambda: "Columns (1,920 of 2,020)" in chooser.text, "100 columns hidden")
    wait(lambda: "p1999" not in browser.find(".grid-head")[0].text, "p1999 hidden")
    browser.screenshot("runs-wide")
    next(b for b in browser.find(".columns-panel button") if b.text == "Show all").click()
    wait(lambda: chooser.text == "Columns (2,020)", "every column shown")
    next(b for b in browser.find(".columns-panel button") if b.text == "Done").click()
    browser.assert_clean()


def test_a_million_step_curve_keeps_its_spike(browser, data):
    mark = browser.mark()
    open_view(
        browser, f"view=charts&exp={data['experiments']['spikes']}&runs={data['spike']}&keys=loss"
    )
    chart = settled(browser, ["loss"])["loss"]
    # The budget matches the plot's width: one bucket (4 points) per pixel column.
    ratio = script(browser, "return window.devicePixelRatio")
    assert chart["budget"] == 4 * round(chart["plot_width"] * ratio)
    [(request, sent)] = scalar_requests(browser, mark)
    assert sent == {
        "runs": [data["spike"]],
        "keys": ["loss"],
        "x": "step",
        "max_points": chart["budget"],
    }
    [series] = browser.response_json(request)["series"]
    assert series["total_points"] == 1_000_000 and series["downsampled"]
    assert len(series["steps"]) <= chart["budget"]
    assert series["values"][series["steps"].index(SPIKE_STEP)] == SPIKE_VALUE
    # What the chart holds is what the server sent, spike included.
    [held] = chart["series"]
    assert held["steps"] == series["steps"] and held["values"] == series["values"]
    assert max(held["values"]) == SPIKE_VALUE
    assert "1,000,000 points" in browser.find(".chart-meta")[0].text
    browser.screenshot("curves-spike")
    browser.assert_clean()


def test_hover_shows_step_value_and_run(browser, data):
    open_view(
        browser, f"view=charts&exp={data['experiments']['spikes']}&runs={data['spike']}&keys=loss"
    )
    settled(browser, ["loss"])
    dx, dy = plot_point(browser, "loss", SPIKE_STEP, SPIKE_VALUE)
    ActionChains(browser.driver).move_to_element_with_offset(
        over(browser, "loss"), int(dx), int(dy)
    ).perform()
    tooltip = wait(
        lambda: [t for t in browser.find(".chart-tooltip") if t.is_displayed()], "the tooltip"
    )[0]
    text = tooltip.text
    assert "step 777,777" in text and "one-spike" in text and "42" in text, text
    browser.screenshot("curves-hover")
    browser.assert_clean()


def test_drag_zoom_refetches_the_range_at_full_detail(browser, data):
    open_view(
        browser, f"view=charts&exp={data['experiments']['spikes']}&runs={data['spike']}&keys=loss"
    )
    first = settled(browser, ["loss"])["loss"]
    mark = browser.mark()
    drag(browser, "loss", 0.7, 0.85)
    zoomed = wait(
        lambda: (c := settled(browser, ["loss"])["loss"])["fetches"] > first["fetches"] and c,
        "a refetch after the drag",
    )
    [(request, sent)] = scalar_requests(browser, mark)
    lo, hi = sent["start"], sent["end"]
    assert 600_000 < lo < SPIKE_STEP < hi < 900_000, (lo, hi)
    assert zoomed["range"] == [lo, hi]
    [series] = browser.response_json(request)["series"]
    assert series["steps"][0] >= lo and series["steps"][-1] <= hi
    assert series["total_points"] == hi - lo + 1
    assert SPIKE_VALUE in series["values"], "the spike is still there"
    assert f"range={lo},{hi}" in browser.driver.current_url.replace("%2C", ",")
    # Zoom again, into fewer steps than the budget: every point, exact.
    mark = browser.mark()
    drag(browser, "loss", 0.45, 0.46)
    exact = wait(
        lambda: (c := settled(browser, ["loss"])["loss"])["fetches"] > zoomed["fetches"] and c,
        "a second refetch",
    )
    [(request, sent)] = scalar_requests(browser, mark)
    [series] = browser.response_json(request)["series"]
    assert not series["downsampled"]
    assert series["steps"] == list(range(sent["start"], sent["end"] + 1))
    assert exact["series"][0]["steps"] == series["steps"]
    browser.screenshot("curves-zoomed")
    # Double-click zooms out: the whole series again.
    mark = browser.mark()
    ActionChains(browser.driver).double_click(over(browser, "loss")).perform()
    browser.wait_for_request("/api/v1/scalars", since=mark)
    [(request, sent)] = scalar_requests(browser, mark)
    assert "start" not in sent and "end" not in sent
    settled(browser, ["loss"])
    browser.assert_clean()


def test_nan_and_infinities_are_marked_not_dropped(browser, data):
    open_view(
        browser,
        f"view=charts&exp={data['experiments']['spikes']}&runs={data['non_finite']}&keys=loss",
    )
    [held] = settled(browser, ["loss"])["loss"]["series"]
    values = dict(zip(held["steps"], held["values"]))
    assert (values[200], values[500], values[800]) == ("NaN", "Infinity", "-Infinity")
    assert held["non_finite_points"] == 3
    legend = browser.find(".chart-foot")[0].text
    assert "NaN" in legend and "+∞" in legend and "−∞" in legend
    # The +∞ marker is painted at the top of the plot, at step 500, in the run's color.
    painted = script(
        browser,
        """const plot = window.stepstore.views.charts.charts.get('loss').plot;
        const ratio = window.devicePixelRatio;
        const x = Math.round(plot.valToPos(500, 'x', true));
        const y = Math.round(plot.bbox.top + 5 * ratio);
        return Array.from(plot.ctx.getImageData(x, y, 1, 1).data);""",
    )
    assert painted[:3] == [0x1F, 0x77, 0xB4], painted
    browser.screenshot("curves-non-finite")
    browser.assert_clean()


def test_smoothing_is_server_side_and_the_same_at_any_zoom(browser, data):
    runs = ",".join(data["sweep"][:3])
    open_view(
        browser, f"view=charts&exp={data['experiments']['sweep']}&runs={runs}&keys=train/loss"
    )
    settled(browser, ["train/loss"])
    mark = browser.mark()
    script(
        browser,
        "const s = document.querySelector('input[type=range]'); s.value = '0.9';"
        "s.dispatchEvent(new Event('input', {bubbles: true}))",
    )
    smoothed = wait(
        lambda: (c := settled(browser, ["train/loss"])["train/loss"])["smoothing"] == 0.9 and c,
        "the smoothed curves",
    )
    [(request, sent)] = scalar_requests(browser, mark)
    assert sent["smoothing"] == 0.9
    whole = {s["run_id"]: s for s in browser.response_json(request)["series"]}
    assert all(s["smoothed"] for s in whole.values())
    # Raw curve faint behind, smoothed on top: two uPlot series per run.
    assert (
        script(
            browser,
            "return window.stepstore.views.charts.charts.get('train/loss').plot.series.length",
        )
        == 1 + 2 * 3
    )
    assert [s["smoothed"] for s in smoothed["series"]] == [
        whole[r]["smoothed"] for r in data["sweep"][:3]
    ]
    assert "smooth=0.9" in browser.driver.current_url
    browser.screenshot("curves-smoothed")
    # Zoomed in, a step's smoothed value is the one it had in the whole curve.
    mark = browser.mark()
    drag(browser, "train/loss", 0.3, 0.32)
    wait(lambda: scalar_requests(browser, mark), "the zoomed read")
    settled(browser, ["train/loss"])
    [(request, sent)] = scalar_requests(browser, mark)
    assert sent["smoothing"] == 0.9 and "start" in sent
    zoomed = {s["run_id"]: s for s in browser.response_json(request)["series"]}
    compared = 0
    for run_id, series in zoomed.items():
        before = dict(zip(whole[run_id]["steps"], whole[run_id]["smoothed"]))
        for step, value in zip(series["steps"], series["smoothed"]):
            if step in before:
                assert value == before[step], (run_id, step)
                compared += 1
    assert compared > 0
    browser.assert_clean()


def test_x_axis_by_wall_time_and_relative_time(browser, data):
    run = data["sweep"][0]
    open_view(browser, f"view=charts&exp={data['experiments']['sweep']}&runs={run}&keys=eval/acc")
    settled(browser, ["eval/acc"])
    select = browser.driver.find_element(By.CSS_SELECTOR, 'select[aria-label="x axis"]')
    for axis, label in (("wall_time", "time"), ("relative_time", "relative time")):
        mark = browser.mark()
        select.find_element(By.CSS_SELECTOR, f'option[value="{axis}"]').click()
        chart = wait(
            lambda axis=axis: (c := settled(browser, ["eval/acc"])["eval/acc"])["x"] == axis and c,
            axis,
        )
        [(request, sent)] = scalar_requests(browser, mark)
        assert sent["x"] == axis
        [series] = browser.response_json(request)["series"]
        assert series["x"] == axis and chart["series"][0]["steps"] == series["steps"]
        axis_label = (
            "return window.stepstore.views.charts.charts.get('eval/acc').plot.axes[0].label"
        )
        assert script(browser, axis_label) == label
    browser.screenshot("curves-relative-time")
    browser.assert_clean()


def test_a_live_run_grows_and_resumes_without_gaps(browser, server, data):
    run = server.create_run("live", "training-now")

    def log(steps, keys=("loss", "acc")):
        server.log_points(run, [(key, step, step / 100) for step in steps for key in keys])

    # `acc` is logged only from step 100: its chart starts empty.
    log(range(100), keys=("loss",))
    experiment = server.get(f"/api/v1/runs/{run}")["experiment_id"]
    mark = browser.mark()
    open_view(browser, f"view=charts&exp={experiment}&runs={run}&keys=loss,acc")
    first = settled(browser, ["loss", "acc"])
    assert first["loss"]["series"][0]["steps"] == list(range(100)) and not first["acc"]["series"]
    [stream] = browser.wait_for_request("/stream", since=mark)
    assert "after_step=99" in stream.url and stream.status == 200
    browser.wait_for_text("live")

    def steps():
        held = charts(browser)
        return {
            key: (held[key]["series"] or [{"steps": []}])[0]["steps"] for key in ("loss", "acc")
        }

    # Points logged now reach the charts through the stream, not a re-read.
    for start in range(100, 150, 10):
        log(range(start, start + 10))
    wait(
        lambda: all(s and s[-1] == 149 for s in steps().values()), "the charts to grow to step 149"
    )
    assert steps() == {"loss": list(range(150)), "acc": list(range(100, 150))}
    assert charts(browser)["loss"]["fetches"] == first["loss"]["fetches"]
    wait(
        lambda: (
            [m.text.split(" · ")[1] for m in browser.find(".chart-meta")]
            == ["150 points", "50 points"]
        ),
        "the charts redrawn",
    )
    browser.screenshot("curves-live")

    # The connection drops; points logged meanwhile arrive after it resumes.
    mark = browser.mark()
    script(browser, "window.stepstore.live.pause()")
    log(range(150, 200))
    script(browser, "window.stepstore.live.resume()")
    wait(
        lambda: all(s[-1] == 199 for s in steps().values()), "the points logged while disconnected"
    )
    assert steps() == {"loss": list(range(200)), "acc": list(range(100, 200))}, "no gap, no repeat"
    [resumed] = browser.wait_for_request("/stream", since=mark)
    assert resumed.headers.get("Last-Event-ID") == "149", resumed.headers
    [stream] = script(browser, "return window.stepstore.live.streams()")
    assert stream["connections"] == 2 and stream["last_event_id"] == "199"

    # The run is rewound to its checkpoint of step 179 and logs again: the
    # charts read the run again and show each step once, the new values
    # after 179.
    fetches = charts(browser)["loss"]["fetches"]
    server.post(f"/api/v1/runs/{run}/rewind", {"step": 179})
    server.log_points(
        run, [(key, step, -step / 100) for step in range(180, 190) for key in ("loss", "acc")]
    )

    def rewound():
        loss = charts(browser)["loss"]
        held = loss["series"][0]
        return (
            loss["fetches"] > fetches
            and held["steps"] == list(range(190))
            and held["values"][185] == -1.85
        )

    wait(rewound, "the charts to show the points after the rewind")
    held = charts(browser)["loss"]["series"][0]
    assert held["values"][179] == 1.79 and held["values"][189] == -1.89
    assert steps()["acc"] == list(range(100, 190))

    # The run ends: the stream closes, the legend says so.
    server.finish(run)
    wait(
        lambda: script(browser, "return window.stepstore.live.streams()[0].state") == "ended",
        "the end event",
    )
    wait(lambda: "live" not in browser.find(".run-legend")[0].text, "the live badge to go")
    browser.assert_clean()


def test_running_runs_beyond_the_stream_limit_are_polled(browser, server):
    runs = [server.create_run("live-many", f"worker-{index}") for index in range(4)]
    for run in runs:
        server.log_points(run, [("loss", step, step / 10) for step in range(10)])
    experiment = server.get(f"/api/v1/runs/{runs[0]}")["experiment_id"]
    open_view(browser, f"view=charts&exp={experiment}&runs={','.join(runs)}&keys=loss")
    settled(browser, ["loss"])
    streams = wait(lambda: script(browser, "return window.stepstore.live.streams()"), "the streams")
    assert [stream["run_id"] for stream in streams] == runs[:3], (
        "three streams, the fourth run polled"
    )
    wait(
        lambda: "1 more refreshed every few seconds" in browser.find(".live-text")[0].text,
        "the polling notice",
    )

    def last_steps():
        return {s["run_id"]: s["steps"][-1] for s in charts(browser)["loss"]["series"]}

    server.log_points(runs[0], [("loss", step, step / 10) for step in range(10, 20)])
    server.log_points(runs[3], [("loss", step, step / 10) for step in range(10, 20)])
    wait(lambda: last_steps()[runs[0]] == 19, "the streamed run to grow")
    wait(lambda: last_steps()[runs[3]] == 19, "the polled run to grow")
    for run in runs:
        server.finish(run)
    wait(lambda: "live" not in browser.find(".run-legend")[0].text, "every run ended")
    wait(lambda: browser.find(".live-text")[0].text == "", "no more following")
    browser.assert_clean()


def test_sql_console(browser, data):
    mark = browser.mark()
    open_view(browser, f"view=sql&exp={data['experiments']['sweep']}")
    # The default example (params joined with the latest metrics) runs at once.
    wait(lambda: len(rows(browser, ".sql-result")) == 6, "the example's six rows")
    select = browser.driver.find_element(By.CSS_SELECTOR, ".sql-examples")
    names = [option.text for option in select.find_elements(By.TAG_NAME, "option")]
    assert {
        "Best run per experiment",
        "Per-run aggregates",
        "Params joined with latest metrics",
    } <= set(names)
    select.find_element(By.XPATH, "option[. = 'Best run per experiment']").click()
    wait(
        lambda: "experiment" in browser.find(".sql-result .grid-head")[0].text,
        "the best-run columns",
    )
    wait(lambda: "sweep" in rows(browser, ".sql-result"), "the sweep's best run")
    select.find_element(By.XPATH, "option[. = 'Per-run aggregates']").click()
    wait(lambda: "mean" in browser.find(".sql-result .grid-head")[0].text, "the aggregate columns")
    wait(lambda: len(rows(browser, ".sql-result")) > 6, "per-run aggregate rows")

    editor = browser.find(".sql-editor")[0]
    editor.clear()
    editor.send_keys(
        f"SELECT run_name, status FROM runs WHERE experiment_id = '{data['experiments']['sweep']}' ORDER BY run_name",
        Keys.CONTROL,
        Keys.ENTER,
    )
    wait(lambda: "6 rows" in browser.find(".sql-info")[0].text, "six rows")
    assert rows(browser, ".sql-result")[0] == "lr=0.0003 bs=128"
    browser.screenshot("sql-console")
    for button, fmt, name in (
        ("Download CSV", "csv", "result.csv"),
        ("Download Arrow", "arrow", "result.arrows"),
    ):
        mark = browser.mark()
        next(b for b in browser.find("button") if b.text == button).click()
        [request] = browser.wait_for_request("/api/v1/sql", since=mark)
        assert json.loads(request.post_data)["format"] == fmt and request.status == 200
        wait(
            lambda name=name: f"Downloaded {name}" in browser.find(".sql-info")[0].text,
            f"the {fmt} download",
        )
        # The file the browser saved.
        saved = browser.driver.execute_async_script(
            """const done = arguments[0];
            fetch(window.stepstore.views.sql.downloaded.url)
              .then((response) => response.arrayBuffer())
              .then((buffer) => done(Array.from(new Uint8Array(buffer))));"""
        )
        if fmt == "csv":
            lines = bytes(saved).decode().splitlines()
            assert lines[0] == "run_name,status" and len(lines) == 7, lines
        else:
            table = pyarrow.ipc.open_stream(bytes(saved)).read_all()
            assert table.column_names == ["run_name", "status"] and table.num_rows == 6

    # A bad query shows the server's message (and is the one failed request).
    mark = browser.mark()
    editor.clear()
    editor.send_keys("SELECT nope FROM runs", Keys.CONTROL, Keys.ENTER)
    wait(lambda: browser.find(".sql-error")[0].is_displayed(), "the error")
    assert "nope" in browser.find(".sql-error")[0].text
    [failed] = browser.wait_for_request("/api/v1/sql", since=mark)
    assert failed.status == 400
    del browser.requests[failed.id]
    browser.assert_clean()


def test_run_page(browser, data):
    open_view(browser, f"exp={data['experiments']['sweep']}")
    wait(lambda: len(rows(browser)) == 6, "the runs")
    click(browser, f'#view-runs a.run-link[href*="{data["sweep"][0]}"]')
    browser.wait_for_text("Params")
    page = browser.find("#view-run")[0]
    tree = page.find_element(By.CSS_SELECTOR, ".param-tree").text
    for text in (
        "optimizer",
        "betas",
        "b1: 0.9",
        "b2: 0.999",
        "lr: 0.1",
        "name: adam",
        "batch_size: 32",
    ):
        assert text in tree, f"{text!r} not in {tree!r}"
    assert "team" in page.text and "vision" in page.text
    assert "mnist-train" in page.text and "context: training" in page.text
    metrics = page.find_element(By.XPATH, ".//h2[starts-with(., 'Metrics')]/..").text
    assert "train/loss" in metrics and "5,000" in metrics
    browser.screenshot("run-page")
    next(a for a in page.find_elements(By.TAG_NAME, "a") if a.text == "train/loss").click()
    settled(browser, ["train/loss"])
    query = parse_qs(urlparse(browser.driver.current_url).query)
    assert (
        query["view"] == ["charts"]
        and query["keys"] == ["train/loss"]
        and query["runs"] == [data["sweep"][0]]
    )
    browser.assert_clean()


def test_a_forked_run_links_its_parent_and_lists_its_rewinds(browser, server):
    parent = server.create_run("forks", "baseline")
    server.log_points(parent, [("loss", step, 1 / (step + 1)) for step in range(300)])
    child = server.post(
        "/api/v1/runs",
        {"run_name": "lower-lr", "fork_from": {"run_id": parent, "step": 200}},
    )["run_id"]
    server.log_points(child, [("loss", step, 0.001) for step in range(201, 260)])
    server.post(f"/api/v1/runs/{child}/rewind", {"step": 250})
    open_view(browser, f"view=run&run={child}")
    browser.wait_for_text("Forked from")
    page = browser.find("#view-run")[0]
    assert "lower-lr" in page.text
    assert f"{parent} at step 200" in page.text, page.text
    assert "Rewound to" in page.text and "step 250" in page.text, page.text
    metrics = page.find_element(By.XPATH, ".//h2[starts-with(., 'Metrics')]/..").text
    # 201 inherited points (steps 0 to 200) and 50 of its own (201 to 250).
    assert "251" in metrics, metrics
    browser.screenshot("run-page-fork")
    page.find_element(By.CSS_SELECTOR, "a.fork-parent").click()
    wait(
        lambda: parse_qs(urlparse(browser.driver.current_url).query).get("run") == [parent],
        "the parent's page",
    )
    browser.wait_for_text("baseline")
    assert "Forked from" not in browser.find("#view-run")[0].text
    browser.assert_clean()


def test_deep_link_restores_the_view(browser, data):
    runs = ",".join(data["sweep"][:2])
    mark = browser.mark()
    open_view(
        browser,
        f"view=charts&exp={data['experiments']['sweep']}&runs={runs}&keys=train/*&x=step&range=1000,2000&smooth=0.6",
    )
    held = settled(browser, ["train/loss", "train/acc"])
    sent = [body for _, body in scalar_requests(browser, mark)]
    assert sorted(body["keys"][0] for body in sent) == ["train/acc", "train/loss"]
    for body in sent:
        assert (body["start"], body["end"], body["smoothing"], body["runs"]) == (
            1000,
            2000,
            0.6,
            data["sweep"][:2],
        )
    for chart in held.values():
        assert all(s["steps"][0] >= 1000 and s["steps"][-1] <= 2000 for s in chart["series"])
    assert browser.find(".smooth-value")[0].text == "0.60"
    assert "steps 1,000 – 2,000" in browser.find(".zoom-text")[0].text
    assert [chip.text.split("\n")[0] for chip in browser.find(".key-chips .chip")] == ["train/*"]
    assert len(browser.find(".legend-run")) == 2
    browser.screenshot("curves-deep-link")
    browser.assert_clean()


def test_a_token_in_local_storage_is_sent_as_a_bearer_token(browser, data):
    open_view(browser, "")
    browser.wait_for_text("sweep")
    script(browser, "localStorage.setItem('stepstore.token', 't0ken')")
    mark = browser.mark()
    open_view(browser, f"exp={data['experiments']['sweep']}")
    wait(lambda: len(rows(browser)) == 6, "the runs")
    api = [r for r in browser.server_requests("/api/", mark) if r.status]
    assert api and all(r.headers.get("Authorization") == "Bearer t0ken" for r in api)
    assert "has-token" in browser.find("#token-button")[0].get_attribute("class")
    script(browser, "localStorage.removeItem('stepstore.token')")
    browser.assert_clean()


def test_the_page_is_served_from_the_binary_with_entity_tags(server):
    http = server.http
    moved = http.get(f"{BASE}/ui?view=sql", allow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/ui/?view=sql"
    for path, kind in (
        ("/ui/", "text/html"),
        ("/ui/js/main.js", "text/javascript"),
        ("/ui/vendor/uPlot.iife.min.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ):
        page = http.get(BASE + path)
        assert page.status_code == 200 and page.headers["content-type"].startswith(kind), path
        assert page.headers["cache-control"] == "no-cache"
        again = http.get(BASE + path, headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304 and not again.content, path
    assert "Leon Sorokin" in http.get(f"{BASE}/ui/vendor/uPlot.LICENSE").text
    assert http.get(f"{BASE}/ui/js/../../Cargo.toml").status_code == 404
