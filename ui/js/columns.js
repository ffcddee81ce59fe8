// The runs table's column chooser: which metric and param columns show,
// per experiment, kept in local storage (hidden columns are remembered, so
// keys logged later show up). The list is filtered by a search box and
// shows at most a few hundred keys at a time, so experiments with thousands
// of keys stay responsive.

import { formatCount, h } from "./format.js";

const LISTED = 300;

export class ColumnChooser {
  constructor(onChange) {
    this.onChange = onChange;
    this.experiment = "";
    this.metrics = [];
    this.params = [];
    this.hidden = new Set();
    this.button = h("button.ghost", { type: "button", onclick: () => this.toggle(), "aria-expanded": "false" }, "Columns");
    this.search = h("input", {
      type: "search",
      placeholder: "Find a key",
      "aria-label": "Find a column",
      oninput: () => this.renderLists(),
    });
    this.lists = h("div.column-lists");
    this.panel = h(
      "div.columns-panel",
      { hidden: true },
      h(
        "div.columns-panel-head",
        {},
        this.search,
        h("button.ghost", { type: "button", onclick: () => this.setAll(false) }, "Show all"),
        h("button.ghost", { type: "button", onclick: () => this.setAll(true) }, "Hide all"),
        h("button", { type: "button", onclick: () => this.toggle() }, "Done"),
      ),
      this.lists,
    );
    this.panel.addEventListener("change", (event) => {
      const id = event.target.dataset.column;
      if (!id) return;
      if (event.target.checked) this.hidden.delete(id);
      else this.hidden.add(id);
      this.save();
    });
  }

  storageKey() {
    return `stepstore.hidden-columns.${this.experiment}`;
  }

  /** The experiment's keys; reads its hidden columns. */
  setKeys(experiment, metrics, params) {
    if (experiment !== this.experiment) {
      this.experiment = experiment;
      try {
        this.hidden = new Set(JSON.parse(localStorage.getItem(this.storageKey()) || "[]"));
      } catch {
        this.hidden = new Set();
      }
    }
    this.metrics = metrics;
    this.params = params;
    this.renderButton();
    if (!this.panel.hidden) this.renderLists();
  }

  visible(id) {
    return !this.hidden.has(id);
  }

  toggle() {
    this.panel.hidden = !this.panel.hidden;
    this.button.setAttribute("aria-expanded", String(!this.panel.hidden));
    if (!this.panel.hidden) {
      this.renderLists();
      this.search.focus();
    }
  }

  matching() {
    const text = this.search.value.trim().toLowerCase();
    const match = (key) => !text || key.toLowerCase().includes(text);
    return {
      metrics: this.metrics.filter(match).map((key) => `metrics.${key}`),
      params: this.params.filter(match).map((key) => `params.${key}`),
    };
  }

  /** Shows (`hide` false) or hides every column the search matches. */
  setAll(hide) {
    const { metrics, params } = this.matching();
    for (const id of [...metrics, ...params]) {
      if (hide) this.hidden.add(id);
      else this.hidden.delete(id);
    }
    this.save();
    this.renderLists();
  }

  save() {
    try {
      localStorage.setItem(this.storageKey(), JSON.stringify([...this.hidden]));
    } catch {
      // Storage full or disabled: the choice lasts until the page reloads.
    }
    this.renderButton();
    this.onChange();
  }

  renderButton() {
    const total = this.metrics.length + this.params.length;
    const known = new Set([...this.metrics.map((key) => `metrics.${key}`), ...this.params.map((key) => `params.${key}`)]);
    let hidden = 0;
    for (const id of this.hidden) if (known.has(id)) hidden++;
    this.button.textContent = hidden
      ? `Columns (${formatCount(total - hidden)} of ${formatCount(total)})`
      : `Columns (${formatCount(total)})`;
  }

  renderLists() {
    const { metrics, params } = this.matching();
    const group = (title, ids, prefix) =>
      h(
        "div.column-group",
        {},
        h("h4", {}, `${title} (${formatCount(ids.length)})`),
        h(
          "div.column-items",
          {},
          ids.slice(0, LISTED).map((id) =>
            h(
              "label.column-item",
              { title: id },
              h("input", { type: "checkbox", dataset: { column: id }, checked: !this.hidden.has(id) }),
              id.slice(prefix.length),
            ),
          ),
        ),
        ids.length > LISTED ? h("p.muted", {}, `${formatCount(ids.length - LISTED)} more: type to narrow the list.`) : null,
      );
    this.lists.replaceChildren(group("Metrics", metrics, "metrics."), group("Params", params, "params."));
  }
}
