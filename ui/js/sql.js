// The SQL console: a query over `POST /api/v1/sql`, its result as a
// (virtualized) table, the same query downloaded as CSV or as an Arrow IPC
// stream, and example queries written for the current experiment (best run
// per experiment, per-run aggregates, params joined with the latest
// metrics). The query is kept in the URL.

import { api } from "./api.js";
import { catalog, searchRuns } from "./catalog.js";
import { escapeHtml, formatCount, h } from "./format.js";
import { Grid } from "./grid.js";
import { state, update } from "./state.js";

const NUMERIC = /^(U?Int|Float|Decimal)/;

function quote(text) {
  return `'${String(text).replace(/'/g, "''")}'`;
}

/** The current experiment's runs' keys, to write examples that return something. */
function experimentKeys() {
  const metrics = new Set();
  const params = new Set();
  for (const run of catalog.runs.values()) {
    if (run.experimentId !== state.exp) continue;
    for (const key in run.metrics) metrics.add(key);
    for (const key in run.params) params.add(key);
  }
  return { metrics: [...metrics].sort(), params: [...params].sort() };
}

function examples() {
  const { metrics, params } = experimentKeys();
  const metric = metrics.find((key) => /acc/.test(key)) || metrics[0] || "loss";
  const lowerIsBetter = /loss|err|perplex/i.test(metric);
  const experiment = quote(state.exp || "0");
  const pivotParams = params.slice(0, 3);
  const pivotMetrics = metrics.slice(0, 3);
  const column = (kind, key) => `"${kind}.${key.replace(/"/g, '""')}"`;
  return [
    {
      name: "Best run per experiment",
      query: `-- Best run of each experiment by the latest value of ${metric}
SELECT e.name AS experiment, r.run_name, r.run_id, l.value AS ${column("final", metric)}
FROM latest_metrics l
JOIN runs r ON r.run_id = l.run_id
JOIN experiments e ON e.experiment_id = r.experiment_id
WHERE l.key = ${quote(metric)} AND r.lifecycle_stage = 'active'
QUALIFY row_number() OVER (PARTITION BY e.experiment_id ORDER BY l.value ${lowerIsBetter ? "ASC" : "DESC"}) = 1
ORDER BY experiment`,
    },
    {
      name: "Per-run aggregates",
      query: `-- Points, min, max and mean of every key of each run in this experiment
SELECT r.run_name, m.key, count(*) AS points, min(m.value) AS min, max(m.value) AS max, avg(m.value) AS mean
FROM metrics m JOIN runs r ON r.run_id = m.run_id
WHERE m.experiment_id = ${experiment}
GROUP BY r.run_name, m.key
ORDER BY r.run_name, m.key`,
    },
    {
      name: "Params joined with latest metrics",
      query: `-- One row per run: params and the latest metric values as columns
SELECT r.run_name, r.status${pivotParams.map((key) => `,\n       max(CASE WHEN p.key = ${quote(key)} THEN p.value END) AS ${column("param", key)}`).join("")}${pivotMetrics.map((key) => `,\n       max(CASE WHEN l.key = ${quote(key)} THEN l.value END) AS ${column("metric", key)}`).join("")}
FROM runs r
LEFT JOIN params p ON p.run_id = r.run_id
LEFT JOIN latest_metrics l ON l.run_id = r.run_id
WHERE r.experiment_id = ${experiment} AND r.lifecycle_stage = 'active'
GROUP BY r.run_id, r.run_name, r.status
ORDER BY r.run_name`,
    },
    {
      name: "Keys and point counts",
      query: `-- Every key of this experiment: runs that logged it, points, last step
SELECT key, count(*) AS runs, sum(count) AS points, max(step) AS last_step
FROM latest_metrics
WHERE experiment_id = ${experiment}
GROUP BY key
ORDER BY key`,
    },
  ];
}

export class SqlView {
  constructor(root) {
    this.root = root;
    this.editor = h("textarea.sql-editor", {
      spellcheck: "false",
      "aria-label": "SQL query",
      placeholder: "SELECT * FROM runs LIMIT 100",
      rows: "8",
    });
    this.editor.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.run();
      }
    });
    this.exampleSelect = h("select.sql-examples", {
      "aria-label": "Example queries",
      onchange: () => this.useExample(),
    });
    this.runButton = h("button.primary", { type: "button", onclick: () => this.run() }, "Run");
    this.csvButton = h("button.ghost", { type: "button", onclick: () => this.download("csv"), disabled: true }, "Download CSV");
    this.arrowButton = h("button.ghost", { type: "button", onclick: () => this.download("arrow"), disabled: true }, "Download Arrow");
    this.info = h("span.muted.sql-info");
    this.error = h("pre.inline-error.sql-error", { hidden: true });
    this.tables = h(
      "p.muted.sql-help",
      {},
      "Tables: experiments, experiment_tags, runs, params, tags, metrics (every point), latest_metrics (one row per run and key), artifacts, artifact_properties, events (lineage). Ctrl+Enter runs the query.",
    );
    const gridHost = h("div.grid-host.sql-result");
    root.append(
      h(
        "div.sql-top",
        {},
        this.editor,
        h("div.sql-actions", {}, this.runButton, this.exampleSelect, h("span.spacer"), this.info, this.csvButton, this.arrowButton),
        this.tables,
        this.error,
      ),
      gridHost,
    );
    this.grid = new Grid(gridHost, { rowHeight: 28, headerHeight: 34, empty: "Run a query to see its result." });
    this.downloaded = null;
  }

  async show() {
    if (state.exp && ![...catalog.runs.values()].some((run) => run.experimentId === state.exp)) {
      // The examples name the experiment's keys: learn them from a few runs.
      try {
        await searchRuns([state.exp], "", { limit: 100 });
      } catch {
        // The examples then use generic key names.
      }
    }
    this.exampleSelect.replaceChildren(
      h("option", { value: "" }, "Example queries…"),
      ...examples().map((example, index) => h("option", { value: String(index) }, example.name)),
    );
    if (state.q && this.editor.value !== state.q) {
      this.editor.value = state.q;
      this.run();
    } else if (!this.editor.value) {
      // A first visit shows what the console does: the sweep table of this experiment.
      this.editor.value = examples()[2].query;
      this.run();
    }
  }

  hide() {}

  update(changed) {
    if (changed.has("q") && state.q !== this.editor.value) {
      this.editor.value = state.q;
      this.run();
    }
    if (changed.has("exp")) this.show();
  }

  useExample() {
    const example = examples()[Number(this.exampleSelect.value)];
    this.exampleSelect.value = "";
    if (!example) return;
    this.editor.value = example.query;
    this.run();
  }

  async run() {
    const query = this.editor.value.trim();
    if (!query) return;
    update({ q: query });
    this.error.hidden = true;
    this.info.textContent = "Running…";
    this.runButton.disabled = true;
    const started = performance.now();
    let body;
    try {
      body = await api("/api/v1/sql", { body: { query, format: "json" } });
    } catch (error) {
      this.error.textContent = error.message;
      this.error.hidden = false;
      this.info.textContent = "";
      this.grid.setColumns([]);
      this.grid.setRows([]);
      this.grid.setEmptyText("");
      return;
    } finally {
      this.runButton.disabled = false;
    }
    const elapsed = performance.now() - started;
    this.info.textContent = `${formatCount(body.row_count)} row${body.row_count === 1 ? "" : "s"} · ${elapsed.toFixed(0)} ms`;
    this.lastQuery = query;
    this.csvButton.disabled = this.arrowButton.disabled = false;
    const columns = body.columns.map((column) => ({
      id: column.name,
      label: column.name,
      title: `${column.name}: ${column.type}`,
      width: Math.min(320, Math.max(90, 9 * column.name.length + 24, NUMERIC.test(column.type) ? 110 : 160)),
      align: NUMERIC.test(column.type) ? "num" : "",
      cell: (row) => {
        const value = row[column.name];
        return value == null ? `<span class="null">NULL</span>` : `<span title="${escapeHtml(value)}">${escapeHtml(value)}</span>`;
      },
    }));
    this.grid.setColumns(columns);
    this.grid.setEmptyText("The query returned no rows.");
    this.grid.scrollToTop();
    this.grid.setRows(body.rows);
  }

  /** Runs the last query again in `format` (csv or arrow) and saves the answer as a file. */
  async download(format) {
    const query = this.lastQuery || this.editor.value.trim();
    if (!query) return;
    try {
      const response = await api("/api/v1/sql", { body: { query, format }, raw: true });
      const blob = await response.blob();
      // The file stays available (at `downloaded.url`) until the next download.
      if (this.downloaded) URL.revokeObjectURL(this.downloaded.url);
      this.downloaded = { url: URL.createObjectURL(blob), name: format === "csv" ? "result.csv" : "result.arrows" };
      const link = h("a", { href: this.downloaded.url, download: this.downloaded.name });
      document.body.append(link);
      link.click();
      link.remove();
      this.info.textContent = `Downloaded ${this.downloaded.name} (${formatCount(blob.size)} bytes)`;
    } catch (error) {
      this.error.textContent = error.message;
      this.error.hidden = false;
    }
  }
}
