// Curve data: reads series from the scalar API (`POST /api/v1/scalars`)
// with the chart's budget, range and smoothing; decodes them into arrays
// (x for the chosen axis, values with NaN and infinities kept); and aligns
// many runs' series on one x array for uPlot, non-finite values left as
// gaps (the chart marks them).

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

/** One series as the chart keeps it (plain arrays, so live points can be appended). */
function decode(json, x) {
  const count = json.steps.length;
  const values = new Array(count);
  for (let index = 0; index < count; index++) values[index] = num(json.values[index]);
  const smoothed = json.smoothed ? json.smoothed.map(num) : null;
  const timestamps = json.timestamps;
  // Relative time counts from the series' first point, which a zoomed read may not include.
  const origin = json.relative_times && count ? timestamps[0] - json.relative_times[0] * 1000 : 0;
  const xs =
    x === "step" ? json.steps.slice() : x === "wall_time" ? timestamps.map((ms) => ms / 1000) : json.relative_times.slice();
  return {
    runId: json.run_id,
    key: json.key,
    steps: json.steps.slice(),
    timestamps: timestamps.slice(),
    xs,
    values,
    smoothed,
    origin,
    total: json.total_points,
    downsampled: json.downsampled,
    nonFinite: json.non_finite_points,
  };
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
 * Points of one series at the same x are nudged apart so none is lost.
 */
export function align(entries) {
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
