// Formatting shared by the views: HTML escaping, numbers (compact and
// full), dates, durations, and the element-building helper `h`.

export function escapeHtml(text) {
  return String(text)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

/** `h("div.card", {title: "x"}, child, ...)`: an element with classes, attributes and children. */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const element = document.createElement(name || "div");
  if (classes.length) element.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value == null) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(element.style, value);
    else if (value === true) element.setAttribute(key, "");
    else element.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

/** A value for a table cell or tooltip: up to 6 significant digits, non-finite spelled out. */
export function formatValue(value) {
  if (value == null) return "";
  if (typeof value !== "number") return String(value);
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+∞";
  if (value === -Infinity) return "−∞";
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e6 || magnitude < 1e-4) return value.toExponential(4).replace(/\.?0+e/, "e");
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return String(Number(value.toPrecision(6)));
}

/** A count with thousands separators. */
export function formatCount(count) {
  return Number(count).toLocaleString("en-US");
}

/** An axis tick: compact (12k, 1.5M). */
export function formatTick(value) {
  const magnitude = Math.abs(value);
  if (magnitude >= 1e9) return `${+(value / 1e9).toFixed(2)}G`;
  if (magnitude >= 1e6) return `${+(value / 1e6).toFixed(2)}M`;
  if (magnitude >= 1e4) return `${+(value / 1e3).toFixed(1)}k`;
  if (magnitude !== 0 && magnitude < 1e-3) return value.toExponential(1);
  return String(+value.toPrecision(4));
}

const pad = (number) => String(number).padStart(2, "0");

/** A date and time in the browser's time zone: 2026-11-30 14:05:09. */
export function formatTime(ms) {
  if (ms == null) return "";
  const date = new Date(ms);
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** A duration: 850 ms, 42 s, 3m 05s, 2h 04m, 3d 02h. */
export function formatDuration(ms) {
  if (ms == null || !Number.isFinite(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${pad(seconds % 60)}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ${pad(minutes % 60)}m`;
  return `${Math.floor(hours / 24)}d ${pad(hours % 24)}h`;
}

/** Seconds as a relative-time axis tick: 45s, 12m, 1.5h. */
export function formatSeconds(seconds) {
  const magnitude = Math.abs(seconds);
  if (magnitude < 120) return `${+seconds.toPrecision(3)}s`;
  if (magnitude < 7200) return `${+(seconds / 60).toPrecision(3)}m`;
  if (magnitude < 172800) return `${+(seconds / 3600).toPrecision(3)}h`;
  return `${+(seconds / 86400).toPrecision(3)}d`;
}

/**
 * Compares two cell values in `direction` (1 ascending, -1 descending):
 * numbers numerically, text naturally (lr 0.001 < 0.01 < 0.1); empty and NaN
 * last in either direction.
 */
export function compareValues(a, b, direction = 1) {
  const aEmpty = a == null || a === "" || Number.isNaN(a);
  const bEmpty = b == null || b === "" || Number.isNaN(b);
  if (aEmpty || bEmpty) return aEmpty === bEmpty ? 0 : aEmpty ? 1 : -1;
  if (typeof a === "number" && typeof b === "number") return direction * (a - b || 0);
  const aNumber = Number(a);
  const bNumber = Number(b);
  if (Number.isFinite(aNumber) && Number.isFinite(bNumber)) return direction * (aNumber - bNumber);
  return direction * String(a).localeCompare(String(b), "en", { numeric: true });
}
