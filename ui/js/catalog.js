// What the page knows about experiments and runs: the experiment list, and
// the runs it has seen (name, status, params, latest metrics), read through
// MLflow's runs/search so the filter grammar and paging are the server's.

import { api, num } from "./api.js";

/** Runs fetched per runs/search page. */
const PAGE = 1000;

export const catalog = {
  experiments: [],
  /** run id -> run (see `toRun`). */
  runs: new Map(),
};

/** A run from runs/search's JSON: `{id, name, status, experimentId, start, end, params, metrics, tags}`. */
function toRun(json) {
  const info = json.info;
  const data = json.data || {};
  const params = {};
  for (const { key, value } of data.params || []) params[key] = value;
  const tags = {};
  for (const { key, value } of data.tags || []) tags[key] = value;
  const metrics = {};
  for (const metric of data.metrics || []) {
    metrics[metric.key] = { value: num(metric.value), step: metric.step, timestamp: metric.timestamp };
  }
  return {
    id: info.run_id,
    name: info.run_name || info.run_id.slice(0, 8),
    status: info.status,
    experimentId: info.experiment_id,
    start: info.start_time ?? null,
    end: info.end_time ?? null,
    user: info.user_id,
    params,
    metrics,
    tags,
  };
}

export async function loadExperiments() {
  const body = await api("/api/v1/experiments");
  catalog.experiments = body.experiments.sort((a, b) => b.last_update_time - a.last_update_time);
  return catalog.experiments;
}

/**
 * Runs of `experimentIds` matching `filter` (MLflow's grammar), newest first,
 * at most `limit`; `onPage(runsSoFar)` after each page. Resolves to
 * `{runs, truncated}`.
 */
export async function searchRuns(experimentIds, filter, { limit = 10000, onPage, signal } = {}) {
  const runs = [];
  let pageToken;
  do {
    const body = await api("/api/2.0/mlflow/runs/search", {
      body: {
        experiment_ids: experimentIds,
        filter,
        max_results: Math.min(PAGE, limit - runs.length),
        order_by: ["attributes.start_time DESC"],
        page_token: pageToken,
      },
      signal,
    });
    for (const json of body.runs || []) {
      const run = toRun(json);
      catalog.runs.set(run.id, run);
      runs.push(run);
    }
    pageToken = body.next_page_token;
    if (onPage) onPage(runs);
  } while (pageToken && runs.length < limit);
  return { runs, truncated: Boolean(pageToken) };
}

/** Fetches the runs with these ids (refreshing status and latest metrics). */
export async function loadRuns(ids) {
  if (!ids.length) return [];
  if (!catalog.experiments.length) await loadExperiments();
  const quoted = ids.map((id) => `'${id.replace(/[^0-9a-f]/g, "")}'`).join(", ");
  const { runs } = await searchRuns(
    catalog.experiments.map((experiment) => experiment.experiment_id),
    `attributes.run_id IN (${quoted})`,
    { limit: ids.length },
  );
  return runs;
}

/** The sorted metric keys of these runs. */
export function metricKeys(runIds) {
  const keys = new Set();
  for (const id of runIds) {
    const run = catalog.runs.get(id);
    if (run) for (const key of Object.keys(run.metrics)) keys.add(key);
  }
  return [...keys].sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
}

/** A run's display name, or a short id while it is not loaded. */
export function runName(id) {
  return catalog.runs.get(id)?.name ?? id.slice(0, 8);
}
