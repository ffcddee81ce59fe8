// One server-sent event connection read with `fetch` (not `EventSource`,
// which cannot send the API token): parses `event`, `data` and `id` fields
// and sends `Last-Event-ID` when resuming, as a browser's EventSource does.
// Reconnecting is the caller's choice (see live.js).

import { ApiError, authHeaders } from "./api.js";

/**
 * Opens `url` and calls `onEvent({type, data, id})` for each event. Resolves
 * when the server closes the stream; rejects on a network error or a refused
 * request (an `ApiError` with the status). `signal` aborts it.
 */
export async function readEventStream(url, { lastEventId, onEvent, signal }) {
  const headers = { Accept: "text/event-stream" };
  if (lastEventId != null) headers["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(url, { headers: authHeaders(headers), signal, cache: "no-store", credentials: "omit" });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).message || message;
    } catch {
      // Not JSON.
    }
    throw new ApiError(response.status, "HTTP_" + response.status, message);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "message", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) onEvent({ type: event.type, data: event.data.join("\n"), id: event.id });
        event = { type: "message", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "event") event.type = text;
      else if (field === "data") event.data.push(text);
      else if (field === "id") event.id = text;
    }
  }
}
