// One chart: one metric key, one line per selected run, drawn by uPlot.
// Owns the chart's data (the series the server sent, plus live points), its
// budget (4 points per pixel column of the plot), the non-finite markers
// (▲ +∞ at the top, ▼ −∞ at the bottom, ◆ NaN on the x axis), drag-to-zoom
// (reported to the view, which refetches the range) and double-click to
// zoom out. With smoothing, the raw curve is drawn faint behind the
// smoothed one. The hover tooltip is tooltip.js.

import { colorAt, faded } from "./colors.js";
import { runName } from "./catalog.js";
import { formatCount, formatSeconds, formatTick, h } from "./format.js";
import { MAX_BUDGET, align, fetchSeries, growable, xOf } from "./series.js";
import { Tooltip } from "./tooltip.js";

/** Plot heights: in a grid of charts, and alone (the whole width). */
const HEIGHT = 250;
const HEIGHT_ALONE = 380;
const Y_AXIS = 62;
const X_AXIS = 34;
const MARK = { nan: "◆", pos: "▲", neg: "▼" };

function xLabel(x) {
  return x === "step" ? "step" : x === "wall_time" ? "time" : "relative time";
}

export class Chart {
  /** `view` gives the selection (runs, x, range, smoothing) and receives zooms. */
  constructor(key, view) {
    this.key = key;
    this.view = view;
    this.series = new Map();
    this.plot = null;
    this.signature = "";
    this.controller = null;
    this.fetches = 0;
    this.draws = 0;
    this.budget = 0;
    this.stale = true;
    this.visible = false;
    this.liveSince = 0;
    this.pending = null;
    this.title = h("h3.chart-title", { title: key }, key);
    this.meta = h("span.chart-meta");
    this.message = h("div.chart-message", {}, "Loading…");
    this.tooltip = new Tooltip(this);
    this.legend = h("div.chart-foot");
    this.body = h("div.chart-body", {}, this.message, this.tooltip.box, this.tooltip.dot);
    this.root = h("div.chart-card", { dataset: { key } }, h("div.chart-head", {}, this.title, this.meta), this.body, this.legend);
  }

  height() {
    return this.root.closest(".charts-grid.single") ? HEIGHT_ALONE : HEIGHT;
  }

  /** The plot area's width in CSS pixels (the card minus the y axis). */
  plotWidth() {
    return Math.max(40, this.body.clientWidth - Y_AXIS - 8);
  }

  /** Points per series: one bucket (first, min, max, last) per device pixel column. */
  budgetFor(width) {
    return Math.max(4, Math.min(MAX_BUDGET, 4 * Math.round(width * (window.devicePixelRatio || 1))));
  }

  /** Reads the chart's data again from the server (aborting a read in flight). */
  async load() {
    this.stale = false;
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    const { runs, x, range, smoothing } = this.view.selection();
    this.budget = this.budgetFor(this.plotWidth());
    this.fetches++;
    this.pending = [];
    this.view.loading(this, true);
    let list;
    try {
      list = await fetchSeries({ runs, key: this.key, x, range, budget: this.budget, smoothing, signal: controller.signal });
    } catch (error) {
      if (controller.signal.aborted) return;
      this.pending = null;
      this.message.textContent = `Cannot read ${this.key}: ${error.message}`;
      this.message.hidden = false;
      this.view.loading(this, false);
      return;
    }
    const replay = this.pending;
    this.pending = null;
    this.series = new Map(list.map((series) => [series.runId, series]));
    this.range = range;
    this.x = x;
    this.smoothing = smoothing;
    this.liveSince = 0;
    for (const series of this.series.values()) this.startEma(series, range == null);
    for (const [runId, points] of replay) this.append(runId, points);
    this.draw();
    this.view.loading(this, false);
  }

  /** Sets up the running average that smooths live points like the server does. */
  startEma(series, whole) {
    const weight = this.smoothing;
    series.ema = null;
    if (!(weight > 0) || !whole) return;
    let last = null;
    for (let index = series.smoothed.length - 1; index >= 0; index--) {
      if (Number.isFinite(series.smoothed[index])) {
        last = series.smoothed[index];
        break;
      }
    }
    const power = weight ** (series.total - series.nonFinite);
    series.ema = { weight, power, accumulated: last == null ? 0 : last * (1 - power) };
  }

  /** Adds live points (`{step, timestamp, value}`, this key) of a run. */
  append(runId, points) {
    if (this.pending) {
      this.pending.push([runId, points]);
      return;
    }
    this.ensureSeries(runId);
    const series = this.series.get(runId);
    if (!series || !this.x) return;
    growable(series);
    let added = 0;
    for (const point of points) {
      if (series.steps.length && point.step <= series.steps.at(-1)) continue;
      const value = typeof point.value === "number" ? point.value : Number(point.value);
      series.steps.push(point.step);
      series.timestamps.push(point.timestamp);
      series.xs.push(xOf(series, this.x, point));
      series.values.push(value);
      series.total++;
      if (!Number.isFinite(value)) series.nonFinite++;
      if (series.smoothed) {
        const ema = series.ema;
        if (ema && Number.isFinite(value)) {
          ema.accumulated = ema.accumulated * ema.weight + (1 - ema.weight) * value;
          ema.power *= ema.weight;
          series.smoothed.push(ema.accumulated / (1 - ema.power));
        } else series.smoothed.push(value);
      }
      added++;
    }
    if (!added) return;
    this.liveSince += added;
    this.view.scheduleDraw(this);
    // Live points are not downsampled: once there are more than a budget's
    // worth, read the curve again (downsampled) from the server.
    if (this.liveSince > this.budget) this.view.scheduleReload(this);
  }

  /** Adds an empty series for a selected run whose first points arrive live. */
  ensureSeries(runId) {
    if (this.series.has(runId) || !this.x || !this.view.selection().runs.includes(runId)) return;
    this.series.set(runId, {
      runId,
      key: this.key,
      steps: [],
      timestamps: [],
      xs: [],
      values: [],
      smoothed: this.smoothing > 0 ? [] : null,
      origin: 0,
      total: 0,
      downsampled: false,
      nonFinite: 0,
      ema: this.smoothing > 0 ? { weight: this.smoothing, power: 1, accumulated: 0 } : null,
    });
  }

  /** The runs drawn, in selection order (their colors). */
  ordered() {
    return this.view
      .selection()
      .runs.map((id, index) => ({ id, index, series: this.series.get(id) }))
      .filter((entry) => entry.series);
  }

  draw() {
    const runs = this.ordered();
    const smoothed = this.smoothing > 0;
    this.message.hidden = runs.some((run) => run.series.steps.length);
    if (!runs.length) this.message.textContent = `None of the selected runs logged ${this.key}.`;
    else if (!runs.some((run) => run.series.steps.length)) this.message.textContent = "No points in this range.";
    const entries = runs.map((run) => ({
      xs: run.series.xs,
      columns: smoothed ? [run.series.values, run.series.smoothed] : [run.series.values],
    }));
    // 8 grid positions per pixel column (the budget is 4): see align().
    const aligned = align(entries, 2 * this.budget);
    // Raw curves first (drawn below), then the smoothed ones on top.
    const data = [aligned[0]];
    const config = [{}];
    const width = smoothed ? 2 : 1;
    for (let position = 0; position < runs.length; position++) {
      data.push(aligned[1 + position * width]);
      const color = colorAt(runs[position].index);
      config.push({ label: runName(runs[position].id), stroke: smoothed ? faded(color, 0.2) : color, width: smoothed ? 1 : 1.5, spanGaps: true });
    }
    if (smoothed) {
      for (let position = 0; position < runs.length; position++) {
        data.push(aligned[2 + position * 2]);
        config.push({ label: `${runName(runs[position].id)} (smoothed)`, stroke: colorAt(runs[position].index), width: 2, spanGaps: true });
      }
    }
    const signature = `${this.x}|${config.map((item) => item.stroke).join(",")}`;
    if (!this.plot || signature !== this.signature) {
      this.plot?.destroy();
      this.signature = signature;
      this.plot = new uPlot(this.options(config), data, this.body);
      this.plot.over.addEventListener("dblclick", () => this.view.zoom(null));
      this.plot.over.addEventListener("mouseleave", () => this.tooltip.hide());
    } else {
      this.plot.setData(data);
    }
    this.renderMeta(runs);
  }

  options(series) {
    const x = this.x;
    const axisFont = "11px system-ui, sans-serif";
    return {
      width: this.body.clientWidth,
      height: this.height(),
      series: series.map((item, index) => (index ? { ...item, points: { show: false } } : item)),
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: false }, points: { show: false } },
      scales: {
        x: {
          time: x === "wall_time",
          range: (plot, min, max) => {
            if (this.range) return [this.range[0], this.range[1]];
            return min === max ? [min - 1, max + 1] : [min, max];
          },
        },
      },
      axes: [
        {
          size: X_AXIS,
          font: axisFont,
          stroke: "#5f6b7a",
          grid: { stroke: "#eef1f5" },
          ticks: { stroke: "#dfe4ea" },
          label: xLabel(x),
          labelSize: 14,
          labelFont: axisFont,
          values: x === "wall_time" ? undefined : (plot, values) => values.map((value) => (x === "step" ? formatTick(value) : formatSeconds(value))),
        },
        {
          size: Y_AXIS,
          font: axisFont,
          stroke: "#5f6b7a",
          grid: { stroke: "#eef1f5" },
          ticks: { stroke: "#dfe4ea" },
          values: (plot, values) => values.map(formatTick),
        },
      ],
      hooks: {
        setSelect: [(plot) => this.selected(plot)],
        draw: [(plot) => this.drawMarkers(plot), () => this.drawn()],
        setCursor: [(plot) => this.tooltip.update(plot)],
      },
    };
  }

  drawn() {
    this.draws++;
    this.view.drawn(this);
  }

  selected(plot) {
    const { left, width } = plot.select;
    plot.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (width < 4) return;
    let lo = plot.posToVal(left, "x");
    let hi = plot.posToVal(left + width, "x");
    if (this.x === "step") {
      lo = Math.floor(lo);
      hi = Math.ceil(hi);
    }
    if (hi > lo) this.view.zoom([lo, hi]);
  }

  /** Marks NaN and infinite values: they have no place on the y axis. */
  drawMarkers(plot) {
    const ctx = plot.ctx;
    const { left, top, width, height } = plot.bbox;
    const ratio = window.devicePixelRatio || 1;
    const size = 6 * ratio;
    ctx.save();
    ctx.lineWidth = ratio;
    ctx.strokeStyle = "#fff";
    for (const run of this.ordered()) {
      const series = run.series;
      if (!series.nonFinite) continue;
      ctx.fillStyle = colorAt(run.index);
      for (let index = 0; index < series.values.length; index++) {
        const value = series.values[index];
        if (Number.isFinite(value)) continue;
        const px = plot.valToPos(series.xs[index], "x", true);
        if (px < left - 1 || px > left + width + 1) continue;
        ctx.beginPath();
        if (value === Infinity) {
          ctx.moveTo(px, top + 1);
          ctx.lineTo(px - size, top + 1 + 1.6 * size);
          ctx.lineTo(px + size, top + 1 + 1.6 * size);
        } else if (value === -Infinity) {
          ctx.moveTo(px, top + height - 1);
          ctx.lineTo(px - size, top + height - 1 - 1.6 * size);
          ctx.lineTo(px + size, top + height - 1 - 1.6 * size);
        } else {
          const y = top + height - size - 1;
          ctx.moveTo(px, y - size);
          ctx.lineTo(px + size, y);
          ctx.lineTo(px, y + size);
          ctx.lineTo(px - size, y);
        }
        ctx.closePath();
        ctx.fill();
        ctx.stroke();
      }
    }
    ctx.restore();
  }

  renderMeta(runs) {
    let total = 0;
    let drawn = 0;
    let downsampled = false;
    const kinds = new Set();
    for (const run of runs) {
      total += run.series.total;
      drawn += run.series.steps.length;
      downsampled ||= run.series.downsampled;
      if (run.series.nonFinite) {
        for (const value of run.series.values) {
          if (Number.isNaN(value)) kinds.add("nan");
          else if (value === Infinity) kinds.add("pos");
          else if (value === -Infinity) kinds.add("neg");
        }
      }
    }
    const detail = downsampled ? `${formatCount(drawn)} drawn, every spike kept` : "every point";
    const nonFinite = runs.reduce((sum, run) => sum + run.series.nonFinite, 0);
    const marked = nonFinite ? ` · ${formatCount(nonFinite)} NaN/∞ marked` : "";
    this.meta.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"} · ${formatCount(total)} points · ${detail}${marked}`;
    this.meta.title = `budget ${formatCount(this.budget)} points per run (4 per pixel column)`;
    const names = { nan: "NaN", pos: "+∞", neg: "−∞" };
    this.legend.replaceChildren(
      ...[...kinds].map((kind) => h("span.marker-key", { dataset: { kind } }, `${MARK[kind]} ${names[kind]}`)),
    );
    this.legend.hidden = !kinds.size;
  }

  resize() {
    this.body.style.minHeight = `${this.height()}px`;
    if (this.plot) this.plot.setSize({ width: this.body.clientWidth, height: this.height() });
  }

  destroy() {
    this.controller?.abort();
    this.plot?.destroy();
    this.root.remove();
  }

  /** What the chart holds, for the browser tests and the benchmark (non-finite values as strings). */
  snapshot() {
    const text = (value) => (Number.isFinite(value) ? value : value == null ? null : String(value));
    return {
      key: this.key,
      x: this.x,
      range: this.range,
      smoothing: this.smoothing,
      budget: this.budget,
      plot_width: this.plotWidth(),
      fetches: this.fetches,
      draws: this.draws,
      series: this.ordered().map((run) => ({
        run_id: run.id,
        steps: Array.from(run.series.steps),
        values: Array.from(run.series.values, text),
        smoothed: run.series.smoothed ? Array.from(run.series.smoothed, text) : null,
        total_points: run.series.total,
        downsampled: run.series.downsampled,
        non_finite_points: run.series.nonFinite,
      })),
    };
  }
}
