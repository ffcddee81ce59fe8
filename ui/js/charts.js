// The charts view: the selected runs' curves, one chart per key (exact keys
// or globs such as train/*), x axis by step, wall time or relative time,
// one zoom range shared by every chart (drag on a chart; the server reads
// that range at full detail), server-side smoothing, and live growth of
// running runs (live.js). Charts are read only once they scroll into view.
// Sets the performance marks `curves:open` and `curves:drawn` (every chart
// in view drawn) that the benchmark reads.

import { catalog, loadRuns, metricKeys, runName } from "./catalog.js";
import { Chart } from "./chart.js";
import { colorAt } from "./colors.js";
import { ChartsToolbar } from "./charts-toolbar.js";
import { formatCount, h } from "./format.js";
import { Live } from "./live.js";
import { setStatus, showError } from "./notice.js";
import { state, update } from "./state.js";

/** The most charts shown at once (a glob can match thousands of keys). */
const MAX_CHARTS = 60;
const RELOAD_THROTTLE_MS = 2000;
const DRAW_THROTTLE_MS = 150;

/** Whether `key` matches the glob `pattern` (`*` any text, `?` one character), as the server's. */
function globMatches(pattern, key) {
  const source = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${source}$`, "s").test(key);
}

export class ChartsView {
  constructor(root) {
    this.root = root;
    this.charts = new Map();
    this.inflight = new Set();
    this.drawTimers = new Map();
    this.reloadTimers = new Map();
    this.runsLoaded = "";
    this.measuring = false;
    this.perf = null;
    this.live = new Live({
      onPoints: (runId, points) => this.livePoints(runId, points),
      onRewind: () => this.reloadCharts(),
      onEnd: (runId, status) => this.runEnded(runId, status),
      onPoll: (ids) => this.poll(ids),
      onChange: () => this.renderLive(),
    });
    this.debug = {
      charts: () => [...this.charts.values()].map((chart) => chart.snapshot()),
      perf: () => this.perf,
    };
    this.toolbar = new ChartsToolbar(() => this.zoom(null));
    this.legend = h("div.run-legend");
    this.notice = h("div.charts-notice", { hidden: true });
    this.grid = h("div.charts-grid");
    this.empty = h("div.empty-state", { hidden: true });
    root.append(this.toolbar.root, this.legend, this.notice, this.empty, this.grid);
    this.visibility = new IntersectionObserver((entries) => this.visibilityChanged(entries), { rootMargin: "200px" });
    let resizeTimer = 0;
    let width = 0;
    new ResizeObserver(() => {
      if (this.grid.clientWidth === width) return;
      width = this.grid.clientWidth;
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => this.resized(), 200);
    }).observe(this.grid);
  }

  selection() {
    return { runs: state.runs, x: state.x, range: state.range, smoothing: state.smooth };
  }

  show() {
    performance.mark("curves:open");
    this.measuring = true;
    this.perf = null;
    this.toolbar.sync();
    this.runsLoaded = "";
    this.rebuild(true);
  }

  hide() {
    this.live.stop();
    for (const chart of this.charts.values()) chart.controller?.abort();
    this.inflight.clear();
    setStatus("");
  }

  update(changed) {
    this.toolbar.sync();
    if (changed.has("runs")) this.runsLoaded = "";
    if (changed.has("runs") || changed.has("keys")) this.rebuild(changed.has("runs"));
    else if (changed.has("x") || changed.has("range") || changed.has("smooth")) this.reloadAll();
  }

  /** The keys to chart: exact keys as given, globs expanded over the runs' keys. */
  chartKeys() {
    const known = metricKeys(state.runs);
    const patterns = state.keys.length ? state.keys : ["*"];
    const keys = [];
    for (const pattern of patterns) {
      if (!/[*?]/.test(pattern)) keys.push(pattern);
      else for (const key of known) if (globMatches(pattern, key)) keys.push(key);
    }
    return [...new Set(keys)];
  }

  /** Whether the charts' keys are known without the runs' keys (no glob among the patterns). */
  keysKnown() {
    return state.keys.length > 0 && state.keys.every((pattern) => !/[*?]/.test(pattern));
  }

  /** Makes the charts match the selection; `reload` reads every chart again. */
  rebuild(reload) {
    const runsKnown = state.runs.every((id) => catalog.runs.has(id));
    if (this.runsLoaded !== state.runs.join(",")) {
      this.runsLoaded = state.runs.join(",");
      this.refreshRuns();
    }
    this.renderLegend();
    this.empty.hidden = Boolean(state.runs.length);
    if (!state.runs.length) {
      this.empty.replaceChildren(
        h("p", {}, "No runs selected."),
        h("p.muted", {}, "Check runs in the runs table to compare their curves here."),
        h("button.primary", { type: "button", onclick: () => update({ view: "runs" }, { push: true }) }, "Choose runs"),
      );
    }
    if (!state.runs.length || (!runsKnown && !this.keysKnown())) {
      this.setCharts([]);
      return;
    }
    const keys = this.chartKeys();
    this.notice.hidden = keys.length <= MAX_CHARTS;
    this.notice.textContent = `${formatCount(keys.length)} keys match; the first ${MAX_CHARTS} are shown. Name keys or narrower globs to see others.`;
    if (!keys.length) {
      this.empty.hidden = false;
      this.empty.replaceChildren(h("p", {}, "No key of the selected runs matches."), h("p.muted", {}, "Add a key or a glob such as train/*."));
    }
    this.setCharts(keys.slice(0, MAX_CHARTS), reload);
    this.toolbar.suggest(metricKeys(state.runs));
  }

  setCharts(keys, reload = false) {
    const alone = keys.length === 1;
    if (alone !== this.grid.classList.contains("single")) {
      // One chart takes the whole width (and more height): sizes and budgets change.
      this.grid.classList.toggle("single", alone);
      this.resized();
    }
    const wanted = new Set(keys);
    for (const [key, chart] of this.charts) {
      if (!wanted.has(key)) {
        this.visibility.unobserve(chart.root);
        chart.destroy();
        this.charts.delete(key);
        this.inflight.delete(chart);
      }
    }
    keys.forEach((key, index) => {
      let chart = this.charts.get(key);
      if (!chart) {
        chart = new Chart(key, this);
        this.charts.set(key, chart);
        this.visibility.observe(chart.root);
      } else if (reload) chart.stale = true;
      const position = this.grid.children[index];
      if (position !== chart.root) this.grid.insertBefore(chart.root, position || null);
      if (chart.stale && chart.visible) chart.load();
    });
    this.follow();
  }

  /** Reads the selected runs (names, statuses, keys), then completes the charts. */
  async refreshRuns() {
    const wanted = this.runsLoaded;
    let found;
    setStatus("Reading the selected runs…");
    try {
      found = new Set((await loadRuns(state.runs)).map((run) => run.id));
      setStatus("");
    } catch (error) {
      showError(`Cannot read the selected runs: ${error.message}`);
      return;
    }
    if (wanted !== this.runsLoaded || this.root.hidden) return;
    const gone = state.runs.filter((id) => !found.has(id));
    if (gone.length) {
      // A shared link can name runs deleted since: leave them out.
      showError(`${gone.length} selected run${gone.length === 1 ? " no longer exists" : "s no longer exist"}: ${gone.join(", ")}`);
      update({ runs: state.runs.filter((id) => found.has(id)) });
      return;
    }
    const before = [...this.charts.keys()].join("\n");
    this.renderLegend();
    if (this.chartKeys().slice(0, MAX_CHARTS).join("\n") !== before) this.rebuild(false);
    else this.follow();
  }

  reloadAll() {
    for (const chart of this.charts.values()) {
      chart.stale = true;
      if (chart.visible) chart.load();
    }
  }

  /** Runs beyond the stream limit: read the charts again, and see whether they still run. */
  async poll(ids) {
    for (const chart of this.charts.values()) if (chart.visible && !this.inflight.has(chart)) chart.load();
    try {
      await loadRuns(ids);
    } catch {
      return;
    }
    this.renderLegend();
    this.follow();
  }

  visibilityChanged(entries) {
    for (const entry of entries) {
      const chart = [...this.charts.values()].find((item) => item.root === entry.target);
      if (!chart) continue;
      chart.visible = entry.isIntersecting;
      if (chart.visible && chart.stale) chart.load();
    }
  }

  resized() {
    for (const chart of this.charts.values()) {
      chart.resize();
      if (chart.budgetFor(chart.plotWidth()) !== chart.budget) {
        chart.stale = true;
        if (chart.visible) chart.load();
      }
    }
  }

  zoom(range) {
    update({ range });
  }

  loading(chart, busy) {
    if (busy) this.inflight.add(chart);
    else this.inflight.delete(chart);
    setStatus(this.inflight.size ? `Reading ${this.inflight.size} chart${this.inflight.size === 1 ? "" : "s"}…` : "");
    if (!busy && !this.inflight.size) this.follow();
  }

  /** Called by a chart after uPlot drew it; marks `curves:drawn` once every chart in view is drawn. */
  drawn() {
    if (!this.measuring || this.inflight.size) return;
    const charts = [...this.charts.values()].filter((chart) => chart.visible);
    if (!charts.length || charts.some((chart) => chart.stale || !chart.draws)) return;
    this.measuring = false;
    performance.mark("curves:drawn");
    const measure = performance.measure("curves", "curves:open", "curves:drawn");
    this.perf = {
      charts: charts.length,
      open_to_drawn_ms: measure.duration,
      navigation_to_drawn_ms: performance.now(),
      points: charts.reduce((sum, chart) => sum + [...chart.series.values()].reduce((total, series) => total + series.steps.length, 0), 0),
    };
  }

  scheduleDraw(chart) {
    if (this.drawTimers.has(chart)) return;
    this.drawTimers.set(
      chart,
      setTimeout(() => {
        this.drawTimers.delete(chart);
        if (this.charts.get(chart.key) === chart) chart.draw();
      }, DRAW_THROTTLE_MS),
    );
  }

  scheduleReload(chart) {
    if (this.reloadTimers.has(chart)) return;
    this.reloadTimers.set(
      chart,
      setTimeout(() => {
        this.reloadTimers.delete(chart);
        if (this.charts.get(chart.key) === chart && !this.inflight.has(chart)) chart.load();
      }, RELOAD_THROTTLE_MS),
    );
  }

  /** Starts (or adjusts) following the running runs once the charts hold their data. */
  follow() {
    if (this.root.hidden || this.inflight.size) return;
    if (!this.charts.size) {
      this.live.stop();
      return;
    }
    // Streams start after the steps the charts hold: wait for their first read.
    if (![...this.charts.values()].some((chart) => chart.fetches > 0)) return;
    const keys = [...this.charts.keys()];
    const running = state.runs.filter((id) => catalog.runs.get(id)?.status === "RUNNING");
    const runs = running.map((id) => {
      let afterStep = null;
      for (const chart of this.charts.values()) {
        const series = chart.series.get(id);
        if (series?.steps.length) {
          const last = series.steps.at(-1);
          afterStep = afterStep == null ? last : Math.min(afterStep, last);
        }
      }
      return { id, afterStep };
    });
    this.live.follow(runs, keys);
  }

  livePoints(runId, points) {
    const byKey = new Map();
    for (const point of points) {
      if (!byKey.has(point.key)) byKey.set(point.key, []);
      byKey.get(point.key).push(point);
    }
    for (const [key, list] of byKey) {
      const chart = this.charts.get(key);
      if (!chart) continue;
      const visible = list.filter((point) => this.inRange(point));
      if (visible.length) chart.append(runId, visible);
    }
  }

  /** Whether a live point falls in the zoom range (relative time: always, its origin is the chart's). */
  inRange(point) {
    const range = state.range;
    if (!range || state.x === "relative_time") return true;
    const x = state.x === "step" ? point.step : point.timestamp / 1000;
    return x >= range[0] && x <= range[1];
  }

  /** Reads every chart again (a followed run was rewound); hidden charts on view. */
  reloadCharts() {
    for (const chart of this.charts.values()) {
      if (chart.visible) chart.load();
      else chart.stale = true;
    }
  }

  runEnded(runId, status) {
    const run = catalog.runs.get(runId);
    if (run) run.status = status;
    this.renderLegend();
  }

  renderLegend() {
    this.legend.replaceChildren(
      ...state.runs.map((id, index) => {
        const run = catalog.runs.get(id);
        const status = run?.status || "";
        return h(
          "span.legend-run",
          { dataset: { run: id } },
          h("span.swatch", { style: { background: colorAt(index) } }),
          h("a.run-link", { href: `?view=run&run=${id}`, onclick: (event) => this.openRun(event, id) }, runName(id)),
          status === "RUNNING" ? h("span.badge.status-running", {}, this.live.following().includes(id) ? "live" : "running") : null,
          h("button.chip-remove", { type: "button", title: "Remove from the comparison", onclick: () => update({ runs: state.runs.filter((other) => other !== id) }) }, "×"),
        );
      }),
    );
  }

  openRun(event, id) {
    event.preventDefault();
    update({ view: "run", run: id }, { push: true });
  }

  renderLive() {
    const streams = this.live.streamStates().filter((stream) => stream.state !== "ended");
    const polled = this.live.polled.length;
    const parts = [];
    if (streams.length) {
      const states = new Set(streams.map((stream) => stream.state));
      parts.push(`● live: ${streams.length} run${streams.length === 1 ? "" : "s"} streaming${states.has("reconnecting") || states.has("paused") ? " (reconnecting)" : ""}`);
    }
    if (polled) parts.push(`${polled} more refreshed every few seconds`);
    if (this.toolbar.setLive(parts.join(" · "))) this.renderLegend();
  }
}
