// Following running runs while the charts are open. Each running run gets a
// server-sent event stream (`/api/v1/runs/{id}/stream`) of the charts' keys,
// starting after the last step the charts hold; a dropped connection is
// reopened with `Last-Event-ID`, so no point is missed or repeated. Browsers
// keep at most six connections to a server, so at most `MAX_STREAMS` runs
// stream; further running runs are followed by re-reading the charts every
// few seconds (`onPoll`).

import { askToken } from "./api.js";
import { readEventStream } from "./sse.js";

/** Runs followed by a stream at once (the rest are polled). */
const MAX_STREAMS = 3;
const RECONNECT_MS = 1000;
const POLL_MS = 3000;
/** `after_step` for a run whose charts hold no point yet: every stored point. */
const BEFORE_EVERY_STEP = "-9223372036854775808";

class Stream {
  constructor(live, runId, afterStep) {
    this.live = live;
    this.runId = runId;
    this.afterStep = afterStep;
    this.lastEventId = null;
    this.state = "connecting";
    this.connections = 0;
    this.points = 0;
    this.paused = false;
    this.closed = false;
    this.controller = null;
    this.retry = 0;
  }

  url() {
    const keys = encodeURIComponent(this.live.keys.join(","));
    const after = this.afterStep == null ? BEFORE_EVERY_STEP : String(this.afterStep);
    return `/api/v1/runs/${this.runId}/stream?keys=${keys}&after_step=${after}`;
  }

  async connect() {
    if (this.closed || this.paused) return;
    this.controller = new AbortController();
    this.connections++;
    this.state = this.connections > 1 ? "resuming" : "connecting";
    this.live.changed();
    try {
      await readEventStream(this.url(), {
        lastEventId: this.lastEventId,
        signal: this.controller.signal,
        onEvent: (event) => this.receive(event),
      });
    } catch (error) {
      if (this.closed || this.paused) return;
      if (error.status === 401 && !(await askToken("The live stream needs an API token."))) {
        this.stop(error);
        return;
      }
      if (error.status && error.status !== 401 && error.status < 500) {
        this.stop(error);
        return;
      }
    }
    if (this.closed || this.paused) return;
    // The connection dropped without an `end`: resume after a pause.
    this.state = "reconnecting";
    this.live.changed();
    this.retry = setTimeout(() => this.connect(), RECONNECT_MS);
  }

  receive(event) {
    if (event.id != null) this.lastEventId = event.id;
    const data = JSON.parse(event.data);
    if (event.type === "points") {
      this.state = "live";
      this.points += data.points.length;
      this.live.onPoints(this.runId, data.points);
    } else if (event.type === "rewind") {
      // The run was rewound: its points past `step` are hidden; the charts
      // read the run again, and the points that replace them follow.
      this.live.onRewind(this.runId, data.step);
    } else if (event.type === "end") {
      this.closed = true;
      this.state = "ended";
      this.live.onEnd(this.runId, data.status);
    } else if (event.type === "error" && data.error_code === "STREAM_LAGGED") {
      // Too far behind: start again after the last step received.
      this.afterStep = data.resume_after_step;
      this.lastEventId = null;
    }
    this.live.changed();
  }

  /** Gives up on a stream the server refuses (run deleted, bad key, no token). */
  stop(error) {
    this.state = `stopped: ${error.message}`;
    this.closed = true;
    this.live.changed();
  }

  /** Drops the connection as a network failure would, and stays down until `resume`. */
  pause() {
    this.paused = true;
    clearTimeout(this.retry);
    this.controller?.abort();
    this.state = "paused";
  }

  resume() {
    this.paused = false;
    this.connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.retry);
    this.controller?.abort();
  }
}

export class Live {
  /**
   * `onPoints(runId, points)` for each batch, `onRewind(runId, step)` when a
   * run is rewound, `onEnd(runId, status)` when a run ends, `onPoll()` every few seconds while runs beyond the stream limit
   * run, `onChange()` when a stream's state changes.
   */
  constructor({ onPoints, onRewind, onEnd, onPoll, onChange }) {
    this.onPoints = onPoints;
    this.onRewind = onRewind;
    this.onEnd = onEnd;
    this.onPoll = onPoll;
    this.onChange = onChange;
    this.keys = [];
    this.streams = new Map();
    this.polled = [];
    this.pollTimer = 0;
    // For the browser tests: the streams' states, and a way to drop the
    // connections as a network failure would.
    this.debug = {
      streams: () => this.streamStates(),
      pause: () => this.streams.forEach((stream) => stream.pause()),
      resume: () => this.streams.forEach((stream) => stream.resume()),
    };
  }

  /**
   * Follows `runs` (`[{id, afterStep}]`, running ones only) for `keys`. Streams
   * already open for the same keys are kept.
   */
  follow(runs, keys) {
    const sameKeys = keys.join(",") === this.keys.join(",");
    this.keys = keys;
    const streamed = runs.slice(0, MAX_STREAMS);
    const wanted = new Set(streamed.map((run) => run.id));
    for (const [id, stream] of this.streams) {
      if (!wanted.has(id) || !sameKeys) {
        stream.close();
        this.streams.delete(id);
      }
    }
    for (const run of streamed) {
      if (this.streams.has(run.id) || !keys.length) continue;
      const stream = new Stream(this, run.id, run.afterStep);
      this.streams.set(run.id, stream);
      stream.connect();
    }
    this.polled = keys.length ? runs.slice(MAX_STREAMS).map((run) => run.id) : [];
    clearInterval(this.pollTimer);
    if (this.polled.length) this.pollTimer = setInterval(() => this.onPoll(this.polled), POLL_MS);
    this.changed();
  }

  stop() {
    for (const stream of this.streams.values()) stream.close();
    this.streams.clear();
    this.polled = [];
    clearInterval(this.pollTimer);
    this.changed();
  }

  /** Each stream: run, state (connecting, live, reconnecting, ended, ...), connections, points received, last event id. */
  streamStates() {
    return [...this.streams.values()].map((stream) => ({
      run_id: stream.runId,
      state: stream.state,
      connections: stream.connections,
      points: stream.points,
      last_event_id: stream.lastEventId,
    }));
  }

  /** Runs being followed (streamed or polled). */
  following() {
    return [...[...this.streams.values()].filter((stream) => !stream.closed).map((stream) => stream.runId), ...this.polled];
  }

  changed() {
    this.onChange();
  }
}
