// The runs view: an experiment's runs as a sweep table (name, status, start
// time, duration, the latest value of every metric and every param as
// columns), sortable by any column, filtered with MLflow's search grammar
// (evaluated by the server), with a column chooser; rows and columns are
// virtualized (see grid.js) so thousands of runs or keys stay fast. Check
// boxes select the runs the charts compare.

import { catalog, searchRuns } from "./catalog.js";
import { colorAt } from "./colors.js";
import { ColumnChooser } from "./columns.js";
import { compareValues, escapeHtml, formatCount, formatDuration, formatTime, formatValue, h } from "./format.js";
import { Grid } from "./grid.js";
import { clearError } from "./notice.js";
import { state, update } from "./state.js";

/** At most this many runs are selected by the select-all box. */
const SELECT_ALL_LIMIT = 50;
/** Reload the table this often while a run in it is running. */
const REFRESH_MS = 15000;

function statusBadge(status) {
  return `<span class="badge status-${escapeHtml(status.toLowerCase())}">${escapeHtml(status.toLowerCase())}</span>`;
}

function durationOf(run) {
  if (run.start == null) return null;
  return (run.end ?? (run.status === "RUNNING" ? Date.now() : null)) - run.start;
}

export class RunsView {
  constructor(root) {
    this.root = root;
    this.rows = [];
    this.selected = new Map();
    this.loadedFor = null;
    this.controller = null;
    this.refreshTimer = 0;
    this.title = h("h1.view-title");
    this.count = h("span.muted.run-count");
    this.filterInput = h("input.filter-input", {
      type: "search",
      placeholder: "Filter: metrics.acc > 0.9 and params.lr = '0.01'",
      "aria-label": "Filter runs (MLflow search syntax)",
      spellcheck: "false",
    });
    this.filterError = h("div.inline-error", { hidden: true });
    this.selectionInfo = h("span.selection-info");
    this.compareButton = h(
      "button.primary",
      { type: "button", onclick: () => update({ view: "charts" }, { push: true }) },
      "Compare curves",
    );
    this.clearButton = h("button.ghost", { type: "button", onclick: () => update({ runs: [] }) }, "Clear selection");
    const filterForm = h(
      "form.filter",
      {
        onsubmit: (event) => {
          event.preventDefault();
          update({ filter: this.filterInput.value.trim() });
        },
      },
      this.filterInput,
      h("button", { type: "submit" }, "Search"),
    );
    this.chooser = new ColumnChooser(() => this.applyColumns());
    const toolbar = h(
      "div.toolbar",
      {},
      h("div.toolbar-title", {}, this.title, this.count),
      filterForm,
      this.chooser.button,
      h("button.ghost", { type: "button", title: "Reload the runs", onclick: () => this.load() }, "↻"),
      h("span.spacer"),
      this.selectionInfo,
      this.clearButton,
      this.compareButton,
    );
    this.gridHost = h("div.grid-host");
    root.append(toolbar, this.filterError, this.chooser.panel, this.gridHost);
    this.grid = new Grid(this.gridHost, {
      frozen: 2,
      onSort: (id) => this.toggleSort(id),
      onClick: (row, column, event) => this.click(row, column, event),
      empty: "No runs.",
    });
    this.gridHost.addEventListener("change", (event) => {
      if (event.target.matches("[data-select-all]")) this.selectAll(event.target.checked);
    });
  }

  show() {
    this.filterInput.value = state.filter;
    if (this.loadedFor !== `${state.exp}\n${state.filter}`) this.load();
    else this.renderSelection();
  }

  hide() {
    clearTimeout(this.refreshTimer);
  }

  update(changed) {
    if (changed.has("exp") || changed.has("filter")) {
      this.filterInput.value = state.filter;
      this.load();
    } else if (changed.has("sort")) this.sortRows();
    if (changed.has("runs")) this.renderSelection();
  }

  async load() {
    clearTimeout(this.refreshTimer);
    if (!state.exp) {
      this.title.textContent = "No experiment";
      this.grid.setEmptyText("No experiments yet: log a run to create one.");
      return;
    }
    const experiment = catalog.experiments.find((item) => item.experiment_id === state.exp);
    this.title.textContent = experiment ? experiment.name : `Experiment ${state.exp}`;
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    const reload = this.loadedFor === `${state.exp}\n${state.filter}`;
    this.loadedFor = `${state.exp}\n${state.filter}`;
    performance.mark("runs:open");
    if (!reload) {
      this.grid.setRows([]);
      this.grid.setEmptyText("Loading runs…");
      this.count.textContent = "";
    }
    this.filterError.hidden = true;
    let result;
    try {
      result = await searchRuns([state.exp], state.filter, { signal: controller.signal });
    } catch (error) {
      if (controller.signal.aborted) return;
      this.rows = [];
      this.grid.setRows([]);
      this.grid.setEmptyText("");
      this.filterError.textContent = error.message;
      this.filterError.hidden = false;
      this.count.textContent = "";
      return;
    }
    clearError();
    this.rows = result.runs;
    this.count.textContent = `${formatCount(result.runs.length)} run${result.runs.length === 1 ? "" : "s"}${result.truncated ? " (newest shown)" : ""}`;
    this.grid.setEmptyText(state.filter ? "No run matches the filter." : "No runs in this experiment yet.");
    this.applyColumns();
    performance.mark("runs:drawn");
    performance.measure("runs", "runs:open", "runs:drawn");
    if (result.runs.some((run) => run.status === "RUNNING")) {
      this.refreshTimer = setTimeout(() => {
        if (!this.root.hidden) this.load();
      }, REFRESH_MS);
    }
  }

  /** Rebuilds the columns (keys of the loaded runs, minus hidden ones) and the rows. */
  applyColumns() {
    const metricKeys = new Set();
    const paramKeys = new Set();
    for (const run of this.rows) {
      for (const key in run.metrics) metricKeys.add(key);
      for (const key in run.params) paramKeys.add(key);
    }
    const byName = (a, b) => a.localeCompare(b, "en", { numeric: true });
    const metrics = [...metricKeys].sort(byName);
    const params = [...paramKeys].sort(byName);
    this.chooser.setKeys(state.exp, metrics, params);
    const columns = [
      {
        id: "select",
        label: "",
        width: 34,
        headerHtml: `<input type="checkbox" data-select-all title="Select the first ${SELECT_ALL_LIMIT} runs shown" aria-label="Select all">`,
        cell: (run) => `<input type="checkbox" data-select="${run.id}"${this.selected.has(run.id) ? " checked" : ""} aria-label="Select run">`,
      },
      {
        id: "name",
        label: "Run",
        width: 230,
        sortable: true,
        value: (run) => run.name,
        cell: (run) => {
          const index = this.selected.get(run.id);
          const swatch = index == null ? `<span class="swatch empty"></span>` : `<span class="swatch" style="background:${colorAt(index)}"></span>`;
          return `${swatch}<a class="run-link" href="?view=run&run=${run.id}" data-open-run title="${escapeHtml(run.name)}">${escapeHtml(run.name)}</a>`;
        },
      },
      { id: "status", label: "Status", width: 96, sortable: true, value: (run) => run.status, cell: (run) => statusBadge(run.status) },
      {
        id: "start",
        label: "Started",
        width: 160,
        sortable: true,
        value: (run) => run.start,
        cell: (run) => escapeHtml(formatTime(run.start)),
      },
      {
        id: "duration",
        label: "Duration",
        width: 92,
        align: "num",
        sortable: true,
        value: durationOf,
        cell: (run) => escapeHtml(formatDuration(durationOf(run))),
      },
    ];
    for (const key of metrics) {
      if (!this.chooser.visible(`metrics.${key}`)) continue;
      columns.push({
        id: `metrics.${key}`,
        label: key,
        title: `metric ${key} (latest value)`,
        group: "metric",
        width: 120,
        align: "num",
        sortable: true,
        value: (run) => run.metrics[key]?.value,
        cell: (run) => {
          const metric = run.metrics[key];
          return metric ? `<span title="step ${metric.step}">${escapeHtml(formatValue(metric.value))}</span>` : "";
        },
      });
    }
    for (const key of params) {
      if (!this.chooser.visible(`params.${key}`)) continue;
      columns.push({
        id: `params.${key}`,
        label: key,
        title: `param ${key}`,
        group: "param",
        width: 120,
        sortable: true,
        value: (run) => run.params[key],
        cell: (run) => {
          const value = run.params[key];
          return value == null ? "" : `<span title="${escapeHtml(value)}">${escapeHtml(value)}</span>`;
        },
      });
    }
    this.columns = columns;
    this.grid.setColumns(columns);
    this.sortRows();
  }

  sortRows() {
    const [id, order] = state.sort.split(":");
    const column = this.columns?.find((item) => item.id === id);
    const rows = [...this.rows];
    if (column) {
      const direction = order === "desc" ? -1 : 1;
      rows.sort((a, b) => compareValues(column.value(a), column.value(b), direction));
      this.grid.setSort(id, direction);
    } else {
      this.grid.setSort("", 1);
    }
    this.sorted = rows;
    this.grid.setRows(rows);
    this.renderSelection();
  }

  toggleSort(id) {
    const [current, order] = state.sort.split(":");
    let next = `${id}:asc`;
    if (current === id) next = order === "asc" ? `${id}:desc` : "";
    update({ sort: next });
  }

  renderSelection() {
    this.selected = new Map(state.runs.map((id, index) => [id, index]));
    const count = state.runs.length;
    const here = new Set(this.rows.map((run) => run.id));
    const elsewhere = state.runs.filter((id) => !here.has(id)).length;
    this.selectionInfo.textContent = !count
      ? "Check runs to compare their curves"
      : `${count} selected${elsewhere ? ` (${elsewhere} in other experiments)` : ""}`;
    this.compareButton.disabled = !count;
    this.clearButton.hidden = !count;
    this.grid.refresh();
  }

  selectAll(checked) {
    if (!checked) {
      const shown = new Set(this.sorted.map((run) => run.id));
      update({ runs: state.runs.filter((id) => !shown.has(id)) });
      return;
    }
    const runs = [...state.runs];
    for (const run of this.sorted) {
      if (runs.length >= SELECT_ALL_LIMIT) break;
      if (!runs.includes(run.id)) runs.push(run.id);
    }
    update({ runs });
  }

  click(run, column, event) {
    if (event.target.matches("[data-select]")) {
      const runs = state.runs.includes(run.id) ? state.runs.filter((id) => id !== run.id) : [...state.runs, run.id];
      update({ runs });
    } else if (event.target.closest("[data-open-run]")) {
      event.preventDefault();
      update({ view: "run", run: run.id }, { push: true });
    }
  }
}
