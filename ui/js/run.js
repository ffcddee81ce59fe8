// The run page: a run's header (status, times, ids, the run it was forked
// from and its rewinds), its params as a tree (dotted keys of a nested
// config become nested groups), its tags, dataset inputs and a summary of
// every metric key (count, step range, latest, min, max) with links that
// open the key's curve.

import { api, num } from "./api.js";
import { catalog } from "./catalog.js";
import { formatCount, formatDuration, formatTime, formatValue, h } from "./format.js";
import { showError } from "./notice.js";
import { state, update } from "./state.js";

/** `{"a.b": 1, "a.c": 2, "d": 3}` -> nested groups `{a: {b, c}, d}` (leaves keep their full key). */
function paramTree(params) {
  const root = { children: new Map(), leaf: null };
  for (const key of Object.keys(params).sort((a, b) => a.localeCompare(b, "en", { numeric: true }))) {
    let node = root;
    for (const part of key.split(".")) {
      if (!node.children.has(part)) node.children.set(part, { children: new Map(), leaf: null });
      node = node.children.get(part);
    }
    node.leaf = { key, value: params[key] };
  }
  return root;
}

function renderTree(node, depth = 0) {
  const items = [];
  for (const [name, child] of node.children) {
    const value = child.leaf ? [h("span.muted", {}, ": "), h("span.param-value", { title: child.leaf.value }, child.leaf.value)] : null;
    const label = h("span.param-name", { title: child.leaf?.key }, name);
    if (child.children.size) {
      items.push(
        h(
          "li",
          {},
          h(
            "details",
            { open: depth < 2 },
            h("summary", {}, label, value, h("span.muted.param-count", {}, ` ${countLeaves(child)}`)),
            renderTree(child, depth + 1),
          ),
        ),
      );
    } else items.push(h("li.param-leaf", {}, label, value));
  }
  return h("ul.param-tree", {}, items);
}

function countLeaves(node) {
  let count = node.leaf ? 1 : 0;
  for (const child of node.children.values()) count += countLeaves(child);
  return count;
}

function table(head, rows) {
  return h(
    "table.plain",
    {},
    h("thead", {}, h("tr", {}, head.map((cell) => h("th", {}, cell)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, row.map((cell) => (cell instanceof Node && cell.tagName === "TD" ? cell : h("td", {}, cell)))))),
  );
}

export class RunView {
  constructor(root) {
    this.root = root;
  }

  show() {
    this.load();
  }

  hide() {}

  update(changed) {
    if (changed.has("run")) this.load();
  }

  async load() {
    const id = state.run;
    if (!id) {
      this.root.replaceChildren(h("div.empty-state", {}, h("p", {}, "No run chosen.")));
      return;
    }
    this.root.replaceChildren(h("p.muted.loading", {}, "Loading run…"));
    let run;
    try {
      run = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
    } catch (error) {
      this.root.replaceChildren();
      showError(`Cannot read run ${id}: ${error.message}`);
      return;
    }
    if (id !== state.run) return;
    this.render(run);
  }

  render(run) {
    const experiment = catalog.experiments.find((item) => item.experiment_id === run.experiment_id);
    const end = run.end_time ?? (run.status === "RUNNING" ? Date.now() : null);
    const keys = Object.keys(run.metrics).sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
    const compare = () =>
      update(
        { view: "charts", runs: state.runs.includes(run.run_id) ? state.runs : [...state.runs, run.run_id], exp: run.experiment_id },
        { push: true },
      );
    const header = h(
      "div.run-header",
      {},
      h(
        "div",
        {},
        h("div.muted.breadcrumb", {}, h("a", { href: `?exp=${run.experiment_id}`, onclick: (event) => this.toExperiment(event, run.experiment_id) }, experiment?.name ?? `Experiment ${run.experiment_id}`), " / run"),
        h("h1.view-title", {}, run.run_name || run.run_id, " ", h(`span.badge.status-${run.status.toLowerCase()}`, {}, run.status.toLowerCase())),
      ),
      h("span.spacer"),
      h("button.primary", { type: "button", onclick: compare }, "Open curves"),
    );
    const facts = h(
      "dl.facts",
      {},
      [
        ["Run id", h("code", {}, run.run_id)],
        ["Started", formatTime(run.start_time)],
        ["Ended", run.end_time ? formatTime(run.end_time) : "—"],
        ["Duration", formatDuration(end - run.start_time)],
        ["User", run.user_id || "—"],
        ["Keys", formatCount(keys.length)],
        ...(run.forked_from ? [["Forked from", this.forkedFrom(run.forked_from)]] : []),
        ...(run.rewinds?.length
          ? [["Rewound to", h("span", { title: run.rewinds.map((rewind) => `step ${rewind.step} at ${formatTime(rewind.time)}`).join("\n") }, run.rewinds.map((rewind) => `step ${formatCount(rewind.step)}`).join(", "))]]
          : []),
      ].flatMap(([term, detail]) => [h("dt", {}, term), h("dd", {}, detail)]),
    );
    const metricRows = keys.map((key) => {
      const summary = run.metrics[key];
      const open = h(
        "a",
        {
          href: `?view=charts&runs=${run.run_id}&keys=${encodeURIComponent(key)}`,
          onclick: (event) => {
            event.preventDefault();
            update({ view: "charts", runs: [run.run_id], keys: [key], exp: run.experiment_id, range: null }, { push: true });
          },
        },
        key,
      );
      return [
        open,
        h("td.num", {}, formatValue(num(summary.value))),
        h("td.num", {}, formatCount(summary.step)),
        h("td.num", {}, formatValue(num(summary.min))),
        h("td.num", {}, formatValue(num(summary.max))),
        h("td.num", {}, formatCount(summary.count)),
        h("td.num", {}, `${formatCount(summary.first_step)} – ${formatCount(summary.last_step)}`),
      ];
    });
    const tags = Object.entries(run.tags).sort(([a], [b]) => a.localeCompare(b));
    const userTags = tags.filter(([key]) => !key.startsWith("mlflow."));
    const systemTags = tags.filter(([key]) => key.startsWith("mlflow."));
    const inputs = run.inputs.map((input) => [
      input.dataset.name,
      h("code", {}, input.dataset.digest),
      input.dataset.source_type,
      Object.entries(input.tags || {})
        .map(([key, value]) => `${key.replace(/^mlflow\.data\./, "")}: ${value}`)
        .join(", "),
    ]);
    const section = (title, count, ...content) =>
      h("section.run-section", {}, h("h2", {}, title, count == null ? null : h("span.muted.count", {}, ` ${formatCount(count)}`)), ...content);
    this.root.replaceChildren(
      header,
      facts,
      h(
        "div.run-columns",
        {},
        h(
          "div",
          {},
          section("Params", Object.keys(run.params).length, Object.keys(run.params).length ? renderTree(paramTree(run.params)) : h("p.muted", {}, "No params.")),
          section(
            "Tags",
            userTags.length,
            userTags.length ? table(["key", "value"], userTags) : h("p.muted", {}, "No tags."),
            systemTags.length ? h("details.system-tags", {}, h("summary.muted", {}, `${systemTags.length} system tags (mlflow.*)`), table(["key", "value"], systemTags)) : null,
          ),
          section("Dataset inputs", inputs.length, inputs.length ? table(["name", "digest", "source", "tags"], inputs) : h("p.muted", {}, "No dataset inputs.")),
        ),
        section(
          "Metrics",
          keys.length,
          keys.length ? table(["key", "latest", "at step", "min", "max", "points", "steps"], metricRows) : h("p.muted", {}, "No metrics logged yet."),
        ),
      ),
    );
  }

  /** A link to the parent run, and the step the run starts after. */
  forkedFrom(fork) {
    const open = (event) => {
      event.preventDefault();
      update({ view: "run", run: fork.run_id }, { push: true });
    };
    return h(
      "span",
      {},
      h("a.fork-parent", { href: `?view=run&run=${encodeURIComponent(fork.run_id)}`, onclick: open }, h("code", {}, fork.run_id)),
      ` at step ${formatCount(fork.step)}`,
    );
  }

  toExperiment(event, experimentId) {
    event.preventDefault();
    update({ view: "runs", exp: experimentId }, { push: true });
  }
}
