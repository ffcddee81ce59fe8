// Curve data: reads series from the scalar API (`POST /api/v1/scalars`)
// with the chart's budget, range and smoothing; decodes them into
// Float64Arrays (x for the chosen axis, values with NaN and infinities
// kept); and aligns many runs' series on one x array for uPlot, non-finite
// values left as gaps (the chart marks them).

import { api, num } from "./api.js";

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
  const response = await api("/api/v1/scalars", { body, signal });
  return response.series.map((json) => decode(json, x));
}

function numbers(list) {
  const out = new Float64Array(list.length);
  for (let index = 0; index < list.length; index++) out[index] = num(list[index]);
  return out;
}

/**
 * One series as the chart keeps it: columns as Float64Arrays (NaN and
 * infinities kept), made growable by `growable` once live points arrive.
 */
function decode(json, x) {
  const steps = Float64Array.from(json.steps);
  const timestamps = Float64Array.from(json.timestamps);
  const relative = json.relative_times ? Float64Array.from(json.relative_times) : null;
  const count = steps.length;
  // Relative time counts from the series' first point, which a zoomed read may not include.
  const origin = relative && count ? timestamps[0] - relative[0] * 1000 : 0;
  let xs;
  if (x === "step") xs = steps;
  else if (x === "wall_time") xs = timestamps.map((ms) => ms / 1000);
  else xs = relative || new Float64Array(count);
  return {
    runId: json.run_id,
    key: json.key,
    steps,
    timestamps,
    xs,
    values: numbers(json.values),
    smoothed: json.smoothed ? numbers(json.smoothed) : null,
    origin,
    total: json.total_points,
    downsampled: json.downsampled,
    nonFinite: json.non_finite_points,
  };
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
