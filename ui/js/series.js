// Curve data: reads series from the scalar API (`POST /api/v1/scalars`)
// with the chart's budget, range and smoothing; has workers parse them
// (series-worker.js) into arrays (x for the chosen axis, values with NaN
// and infinities kept); and aligns many runs' series on one x array for
// uPlot, non-finite values left as gaps (the chart marks them).

import { api } from "./api.js";
import { parseSeries } from "./series-parse.js";

/** The scalar API's largest budget per series. */
export const MAX_BUDGET = 100000;

/**
 * Reads `key` for `runs`. `budget` points per series (4 per pixel column:
 * each bucket keeps its first, last, smallest and greatest point), `range`
 * `[start, end]` on the `x` axis or null, `smoothing` in [0, 1).
 */
export async function fetchSeries({ runs, key, x, range, budget, smoothing, signal }) {
  const body = { runs, keys: [key], x, max_points: budget };
  if (range) {
    body.start = range[0];
    body.end = range[1];
  }
  if (smoothing > 0) body.smoothing = smoothing;
  const response = await api("/api/v1/scalars", { body, signal, raw: true });
  const bytes = await response.arrayBuffer();
  const series = await parse(bytes, x);
  signal?.throwIfAborted();
  return series;
}

/**
 * Makes a series' columns plain arrays, so live points can be appended
 * (a read leaves them Float64Arrays, which cannot grow).
 */
export function growable(series) {
  for (const name of ["steps", "timestamps", "xs", "values", "smoothed"]) {
    if (ArrayBuffer.isView(series[name])) series[name] = Array.from(series[name]);
  }
}

/**
 * Workers that parse answers (one per core, at most 4), each with its
 * jobs in flight; empty when workers cannot start (answers are then
 * parsed on the page's thread).
 */
const workers = [];
let workersTried = false;
let nextJob = 0;

function startWorkers() {
  workersTried = true;
  const count = Math.max(1, Math.min(4, navigator.hardwareConcurrency || 2));
  try {
    for (let index = 0; index < count; index++) {
      const worker = new Worker(new URL("./series-worker.js", import.meta.url), { type: "module" });
      const entry = { worker, jobs: new Map() };
      worker.onmessage = ({ data }) => {
        const job = entry.jobs.get(data.id);
        if (!job) return;
        entry.jobs.delete(data.id);
        if (data.error) job.reject(new Error(data.error));
        else job.resolve(data.series);
      };
      worker.onerror = (event) => {
        event.preventDefault();
        for (const job of entry.jobs.values()) job.reject(new Error(`the series parser failed: ${event.message}`));
        entry.jobs.clear();
      };
      workers.push(entry);
    }
  } catch {
    workers.length = 0;
  }
}

// Started with the page, so they are ready when the first answer comes.
startWorkers();

/** Parses an answer in the least busy worker (the bytes move to it). */
function parse(bytes, x) {
  if (!workersTried) startWorkers();
  if (!workers.length) return Promise.resolve(parseSeries(bytes, x).series);
  const entry = workers.reduce((best, item) => (item.jobs.size < best.jobs.size ? item : best));
  const id = ++nextJob;
  return new Promise((resolve, reject) => {
    entry.jobs.set(id, { resolve, reject });
    entry.worker.postMessage({ id, bytes, x }, [bytes]);
  });
}

/** The x of a point on axis `x` for a series (live points). */
export function xOf(series, x, point) {
  if (x === "step") return point.step;
  if (x === "wall_time") return point.timestamp / 1000;
  if (!series.xs.length) series.origin = point.timestamp;
  return (point.timestamp - series.origin) / 1000;
}

/**
 * Aligns columns of several series on one sorted x array, for uPlot:
 * `entries` are `{xs, columns: [values...]}`; returns `[x, ...columns]`
 * with null where a series has no point at an x or its value is not finite.
 *
 * When the series hold more points together than `cells` (the chart asks
 * for 8 per pixel column), the x array is a grid of `cells` evenly spaced
 * positions from the smallest to the greatest x, and each point takes the
 * nearest free position after its series' previous point (a shift of a
 * fraction of a pixel, order kept, no point dropped): uPlot then walks
 * `cells` rows per series instead of the union of every series' x, which
 * for 20 runs is 20 times longer. The tooltip and the markers read the
 * series' exact x. Otherwise the x array is the union of the series' x,
 * and points of one series at the same x are nudged apart.
 */
export function align(entries, cells = Infinity) {
  const total = entries.reduce((sum, entry) => sum + entry.xs.length, 0);
  let low = Infinity;
  let high = -Infinity;
  for (const entry of entries) {
    for (const value of entry.xs) {
      if (value < low) low = value;
      if (value > high) high = value;
    }
  }
  if (total > cells && cells >= 2 && high > low) return alignOnGrid(entries, cells, low, high);
  return alignExactly(entries);
}

function alignOnGrid(entries, cells, low, high) {
  const spacing = (high - low) / (cells - 1);
  let length = cells;
  const positions = entries.map((entry) => {
    const at = new Int32Array(entry.xs.length);
    let previous = -1;
    for (let index = 0; index < entry.xs.length; index++) {
      const cell = Math.max(previous + 1, Math.round((entry.xs[index] - low) / spacing));
      at[index] = cell;
      previous = cell;
    }
    length = Math.max(length, previous + 1);
    return at;
  });
  const x = new Array(length);
  for (let cell = 0; cell < length; cell++) x[cell] = low + cell * spacing;
  x[cells - 1] = high;
  const out = [x];
  entries.forEach((entry, entryIndex) => {
    const at = positions[entryIndex];
    for (const column of entry.columns) {
      const aligned = new Array(length).fill(null);
      for (let index = 0; index < at.length; index++) {
        const value = column[index];
        aligned[at[index]] = Number.isFinite(value) ? value : null;
      }
      out.push(aligned);
    }
  });
  return out;
}

function alignExactly(entries) {
  let total = 0;
  const nudged = entries.map((entry) => {
    const xs = Float64Array.from(entry.xs);
    for (let index = 1; index < xs.length; index++) {
      if (xs[index] <= xs[index - 1]) {
        const previous = xs[index - 1];
        xs[index] = previous + Math.max(Math.abs(previous) * 1e-12, 1e-9);
      }
    }
    total += xs.length;
    return xs;
  });
  const all = new Float64Array(total);
  let offset = 0;
  for (const xs of nudged) {
    all.set(xs, offset);
    offset += xs.length;
  }
  all.sort();
  let unique = 0;
  for (let index = 0; index < all.length; index++) {
    if (index === 0 || all[index] !== all[unique - 1]) all[unique++] = all[index];
  }
  const x = Array.from(all.subarray(0, unique));
  const out = [x];
  entries.forEach((entry, entryIndex) => {
    const xs = nudged[entryIndex];
    for (const column of entry.columns) {
      const aligned = new Array(unique).fill(null);
      let position = 0;
      for (let index = 0; index < xs.length; index++) {
        while (x[position] < xs[index]) position++;
        const value = column[index];
        aligned[position] = Number.isFinite(value) ? value : null;
      }
      out.push(aligned);
    }
  });
  return out;
}
