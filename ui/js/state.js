// The page's selection, kept in the URL so a view can be shared: the
// experiment, the view, the selected runs, the chart keys, the x axis, the
// zoom range, the smoothing, the runs filter and sort, the run shown on the
// run page and the SQL query. Views read `state`, change it with `update()`
// and are told of every change (and of back/forward navigation).

const DEFAULTS = {
  view: "runs",
  exp: "",
  runs: [],
  keys: [],
  x: "step",
  range: null,
  smooth: 0,
  filter: "",
  sort: "",
  run: "",
  q: "",
};

const LISTS = new Set(["runs", "keys"]);

/** The current selection (read-only for views: change it with `update`). */
export const state = { ...DEFAULTS };

const listeners = [];

function parse(search) {
  const params = new URLSearchParams(search);
  const next = { ...DEFAULTS };
  for (const [name, fallback] of Object.entries(DEFAULTS)) {
    const text = params.get(name);
    if (text === null || text === "") continue;
    if (LISTS.has(name)) next[name] = text.split(",").filter(Boolean);
    else if (name === "range") {
      const [lo, hi] = text.split(",").map(Number);
      next.range = Number.isFinite(lo) && Number.isFinite(hi) && lo < hi ? [lo, hi] : null;
    } else if (name === "smooth") {
      const value = Number(text);
      next.smooth = value >= 0 && value < 1 ? value : 0;
    } else next[name] = typeof fallback === "string" ? text : fallback;
  }
  if (!["runs", "charts", "sql", "run"].includes(next.view)) next.view = "runs";
  if (!["step", "wall_time", "relative_time"].includes(next.x)) next.x = "step";
  return next;
}

/** The query string for a selection (defaults left out). */
export function serialize(selection) {
  const params = new URLSearchParams();
  for (const [name, fallback] of Object.entries(DEFAULTS)) {
    const value = selection[name];
    if (LISTS.has(name)) {
      if (value.length) params.set(name, value.join(","));
    } else if (name === "range") {
      if (value) params.set(name, `${value[0]},${value[1]}`);
    } else if (value !== fallback && value !== "" && value != null) {
      params.set(name, String(value));
    }
  }
  const text = params.toString().replace(/%2C/g, ",").replace(/%2F/g, "/").replace(/%2A/g, "*");
  return text ? `?${text}` : location.pathname;
}

function notify(changed) {
  for (const listener of listeners) listener(changed);
}

/**
 * Changes the selection. `push: true` makes a new history entry (a change of
 * view or experiment); other changes replace the current one.
 */
export function update(patch, { push = false } = {}) {
  const changed = new Set();
  for (const [name, value] of Object.entries(patch)) {
    if (JSON.stringify(state[name]) !== JSON.stringify(value)) {
      state[name] = value;
      changed.add(name);
    }
  }
  if (!changed.size) return;
  const url = serialize(state);
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  notify(changed);
}

/** Calls `listener(changedNames)` after every change. */
export function subscribe(listener) {
  listeners.push(listener);
}

/** Reads the URL (at start and on back/forward). */
export function load() {
  const next = parse(location.search);
  const changed = new Set();
  for (const name of Object.keys(DEFAULTS)) {
    if (JSON.stringify(state[name]) !== JSON.stringify(next[name])) changed.add(name);
  }
  Object.assign(state, next);
  return changed;
}

window.addEventListener("popstate", () => {
  const changed = load();
  if (changed.size) notify(changed);
});
