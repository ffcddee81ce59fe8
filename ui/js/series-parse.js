// Turns the scalar API's JSON answer (`POST /api/v1/scalars`) into columns
// of numbers: each series' x on the chosen axis, steps, timestamps, values
// and smoothed values as Float64Arrays (NaN and infinities kept), ready to
// cross from a worker to the page without copying. Used by
// series-worker.js, and by the page itself when it cannot start a worker.

/** A number as the API writes it: a JSON number or "NaN"/"Infinity"/"-Infinity". */
function num(value) {
  if (typeof value === "number") return value;
  if (value === "NaN") return NaN;
  if (value === "Infinity") return Infinity;
  if (value === "-Infinity") return -Infinity;
  return value == null ? NaN : Number(value);
}

function numbers(list) {
  const out = new Float64Array(list.length);
  for (let index = 0; index < list.length; index++) out[index] = num(list[index]);
  return out;
}

/**
 * Parses the answer's bytes for axis `x` ("step", "wall_time" or
 * "relative_time"). Returns the series and the buffers to transfer.
 */
export function parseSeries(bytes, x) {
  const answer = JSON.parse(new TextDecoder().decode(bytes));
  const transfer = [];
  const series = answer.series.map((json) => {
    const steps = Float64Array.from(json.steps);
    const timestamps = Float64Array.from(json.timestamps);
    const values = numbers(json.values);
    const smoothed = json.smoothed ? numbers(json.smoothed) : null;
    const relative = json.relative_times ? Float64Array.from(json.relative_times) : null;
    const count = steps.length;
    // Relative time counts from the series' first point, which a zoomed read may not include.
    const origin = relative && count ? timestamps[0] - relative[0] * 1000 : 0;
    let xs;
    if (x === "step") xs = steps.slice();
    else if (x === "wall_time") xs = timestamps.map((ms) => ms / 1000);
    else xs = relative ? relative.slice() : new Float64Array(count);
    for (const array of [steps, timestamps, values, smoothed, xs]) if (array) transfer.push(array.buffer);
    return {
      runId: json.run_id,
      key: json.key,
      steps,
      timestamps,
      xs,
      values,
      smoothed,
      origin,
      total: json.total_points,
      downsampled: json.downsampled,
      nonFinite: json.non_finite_points,
    };
  });
  return { series, transfer };
}
