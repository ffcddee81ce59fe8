// The dashboard's entry point: reads the selection from the URL, fills the
// experiments sidebar, switches between the views (runs table, charts, SQL
// console, run page) and exposes `window.stepstore` (the charts' data and
// the live streams, for the browser tests and the benchmark).

import { api, initTokenButton } from "./api.js";
import { catalog, loadExperiments } from "./catalog.js";
import { showError } from "./notice.js";
import { load, state, subscribe, update } from "./state.js";
import { formatCount, h } from "./format.js";
import { RunsView } from "./runs.js";
import { ChartsView } from "./charts.js";
import { SqlView } from "./sql.js";
import { RunView } from "./run.js";

const views = {
  runs: new RunsView(document.getElementById("view-runs")),
  charts: new ChartsView(document.getElementById("view-charts")),
  sql: new SqlView(document.getElementById("view-sql")),
  run: new RunView(document.getElementById("view-run")),
};
let active = null;
const runCounts = new Map();

window.stepstore = { views, state, charts: views.charts.debug, live: views.charts.live.debug };

function renderExperiments() {
  const list = document.getElementById("experiments");
  const filter = document.getElementById("experiment-filter").value.trim().toLowerCase();
  list.replaceChildren(
    ...catalog.experiments
      .filter((experiment) => !filter || experiment.name.toLowerCase().includes(filter))
      .map((experiment) => {
        const count = runCounts.get(experiment.experiment_id);
        return h(
          "li",
          {},
          h(
            "a.experiment" + (experiment.experiment_id === state.exp ? ".selected" : ""),
            {
              href: `?exp=${experiment.experiment_id}`,
              dataset: { experiment: experiment.experiment_id },
              title: `${experiment.name} (id ${experiment.experiment_id})`,
            },
            h("span.experiment-name", {}, experiment.name),
            h("span.experiment-count", {}, count == null ? "" : formatCount(count)),
          ),
        );
      }),
  );
}

/** Run counts per experiment for the sidebar (one SQL query; optional). */
async function loadRunCounts() {
  try {
    const body = await api("/api/v1/sql", {
      body: {
        query:
          "SELECT experiment_id, count(*) AS runs FROM runs WHERE lifecycle_stage = 'active' GROUP BY experiment_id",
      },
    });
    for (const row of body.rows) runCounts.set(row.experiment_id, row.runs);
    renderExperiments();
  } catch {
    // Counts are a nicety; the list works without them.
  }
}

const VIEW_NAMES = { runs: "Runs", charts: "Charts", sql: "SQL", run: "Run" };

function route(changed) {
  for (const tab of document.querySelectorAll("#tabs a")) {
    tab.classList.toggle("active", tab.dataset.view === state.view);
  }
  const experiment = catalog.experiments.find((item) => item.experiment_id === state.exp);
  document.title = [VIEW_NAMES[state.view], experiment?.name, "stepstore"].filter(Boolean).join(" · ");
  if (changed.has("exp")) renderExperiments();
  if (active !== state.view) {
    if (active) {
      views[active].hide();
      views[active].root.hidden = true;
    }
    active = state.view;
    views[active].root.hidden = false;
    views[active].show();
  } else {
    views[active].update(changed);
  }
}

async function start() {
  initTokenButton();
  load();
  document.getElementById("experiment-filter").addEventListener("input", renderExperiments);
  document.getElementById("experiments").addEventListener("click", (event) => {
    const link = event.target.closest("[data-experiment]");
    if (!link) return;
    event.preventDefault();
    update({ exp: link.dataset.experiment, view: "runs", filter: "", sort: "" }, { push: true });
  });
  document.getElementById("tabs").addEventListener("click", (event) => {
    const link = event.target.closest("[data-view]");
    if (!link) return;
    event.preventDefault();
    update({ view: link.dataset.view }, { push: true });
  });
  try {
    await loadExperiments();
  } catch (error) {
    showError(`Cannot list experiments: ${error.message}`);
  }
  if (!state.exp && catalog.experiments.length) {
    const withRuns = catalog.experiments.find((experiment) => experiment.experiment_id !== "0");
    update({ exp: (withRuns || catalog.experiments[0]).experiment_id });
  }
  subscribe(route);
  renderExperiments();
  route(new Set(["exp"]));
  loadRunCounts();
}

start();
