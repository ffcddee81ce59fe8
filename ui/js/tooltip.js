// A chart's hover tooltip: at the cursor's x, each run's nearest point
// (step, value, smoothed and raw when smoothing, wall time), runs sorted by
// value, the point nearest the cursor in bold and ringed on the plot. Reads
// the chart's own series (not uPlot's aligned copy), so runs whose points
// fall at different x still show.

import { runName } from "./catalog.js";
import { colorAt } from "./colors.js";
import { escapeHtml, formatCount, formatSeconds, formatTime, formatValue, h } from "./format.js";

/** Pixels from the cursor within which a run's point counts as under it. */
const HOVER_PX = 12;

/** The tooltip's heading: the point's step, wall time or relative time. */
function formatX(x, series, index) {
  if (x === "step") return `step ${formatCount(series.steps[index])}`;
  if (x === "wall_time") return formatTime(series.timestamps[index]);
  return formatSeconds(series.xs[index]);
}

/** The index in sorted `xs` nearest to `value`. */
function nearest(xs, value) {
  let lo = 0;
  let hi = xs.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  if (lo > 0 && Math.abs(xs[lo - 1] - value) <= Math.abs(xs[lo] - value)) return lo - 1;
  return lo;
}

/** Pixels from the cursor to a point. */
function distance(plot, series, index, left, top) {
  const value = (series.smoothed || series.values)[index];
  const dx = plot.valToPos(series.xs[index], "x") - left;
  const dy = Number.isFinite(value) ? plot.valToPos(value, "y") - top : 40;
  return Math.hypot(dx, dy);
}

export class Tooltip {
  constructor(chart) {
    this.chart = chart;
    this.box = h("div.chart-tooltip", { hidden: true });
    this.dot = h("div.chart-dot", { hidden: true });
  }

  hide() {
    this.box.hidden = true;
    this.dot.hidden = true;
  }

  /** Follows the cursor (uPlot's setCursor hook). */
  update(plot) {
    const { left, top } = plot.cursor;
    const rows = left == null || left < 0 ? [] : this.pick(plot, left, top);
    if (!rows.length) {
      this.hide();
      return;
    }
    const best = rows.reduce((nearest, row) => (row.distance < nearest.distance ? row : nearest));
    this.render(rows, best);
    this.place(plot, left, best);
  }

  /** Each run's point under the cursor's x (within HOVER_PX), the one nearest the cursor. */
  pick(plot, left, top) {
    const value = plot.posToVal(left, "x");
    const rows = [];
    const under = (series, index) => Math.abs(plot.valToPos(series.xs[index], "x") - left) <= HOVER_PX;
    for (const run of this.chart.ordered()) {
      const series = run.series;
      if (!series.xs.length) continue;
      const index = nearest(series.xs, value);
      if (!under(series, index)) continue;
      let chosen = index;
      let chosenDistance = Infinity;
      for (let step = -1; step <= 1; step += 2) {
        for (let other = step < 0 ? index : index + 1; other >= 0 && other < series.xs.length && under(series, other); other += step) {
          const gap = distance(plot, series, other, left, top);
          if (gap < chosenDistance) [chosen, chosenDistance] = [other, gap];
        }
      }
      rows.push({ run, index: chosen, distance: chosenDistance });
    }
    return rows;
  }

  /** Writes the rows, highest value first (NaN last). */
  render(rows, best) {
    const shown = this.chart.smoothing > 0 ? "smoothed" : "values";
    const key = (row) => {
      const value = row.run.series[shown][row.index];
      return value == null || Number.isNaN(value) ? -Infinity : value;
    };
    rows.sort((a, b) => (key(b) > key(a)) - (key(b) < key(a)));
    const x = this.chart.x;
    const lines = rows.slice(0, 12).map((row) => {
      const series = row.run.series;
      const raw = formatValue(series.values[row.index]);
      const smooth = series.smoothed ? ` <span class="muted">raw ${escapeHtml(raw)}</span>` : "";
      const main = series.smoothed ? formatValue(series.smoothed[row.index]) : raw;
      const step = x === "step" ? "" : ` <span class="muted">step ${formatCount(series.steps[row.index])}</span>`;
      const swatch = `<span class="swatch" style="background:${colorAt(row.run.index)}"></span>`;
      return `<div class="tt-row${row === best ? " best" : ""}">${swatch}<span class="tt-run">${escapeHtml(runName(row.run.id))}</span><span class="tt-value">${escapeHtml(main)}</span>${smooth}${step}</div>`;
    });
    if (rows.length > 12) lines.push(`<div class="muted">${rows.length - 12} more runs</div>`);
    const series = best.run.series;
    const head = formatX(x, series, best.index);
    const time = x === "wall_time" ? "" : ` <span class="muted">${escapeHtml(formatTime(series.timestamps[best.index]))}</span>`;
    this.box.innerHTML = `<div class="tt-head">${escapeHtml(head)}${time}</div>${lines.join("")}`;
    this.box.hidden = false;
  }

  /** Puts the box beside the cursor (left of it near the right edge) and rings the nearest point. */
  place(plot, left, best) {
    const plotLeft = plot.over.offsetLeft;
    const plotTop = plot.over.offsetTop;
    const width = this.box.offsetWidth;
    const right = plotLeft + left + 14 + width > this.chart.body.clientWidth;
    this.box.style.left = `${Math.max(0, right ? plotLeft + left - 14 - width : plotLeft + left + 14)}px`;
    this.box.style.top = `${plotTop + 4}px`;
    const series = best.run.series;
    const value = (series.smoothed || series.values)[best.index];
    this.dot.hidden = !Number.isFinite(value);
    if (this.dot.hidden) return;
    this.dot.style.left = `${plotLeft + plot.valToPos(series.xs[best.index], "x")}px`;
    this.dot.style.top = `${plotTop + plot.valToPos(value, "y")}px`;
    this.dot.style.borderColor = colorAt(best.run.index);
  }
}
