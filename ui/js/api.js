// The one way the page talks to the server: `api()` sends a request with
// the API token from local storage (when one is set) as a bearer token, asks
// for a token on a 401 and retries once, and turns error bodies
// (`{error_code, message}`) into `ApiError`s. Also the token dialog and the
// decoding of the API's non-finite numbers ("NaN", "Infinity").

const TOKEN_KEY = "stepstore.token";

/** A request the server refused or that failed. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** Headers every request carries: the bearer token, when one is set. */
export function authHeaders(headers = {}) {
  const value = token();
  return value ? { ...headers, Authorization: `Bearer ${value}` } : headers;
}

let pendingAsk = null;

/** Shows the token dialog; resolves to true when a token was saved. */
export function askToken(reason) {
  if (pendingAsk) return pendingAsk;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-reason").textContent =
    reason ||
    "The token is kept in this browser's local storage and sent as Authorization: Bearer … with every request.";
  input.value = token();
  document.getElementById("token-forget").hidden = !token();
  pendingAsk = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        pendingAsk = null;
        if (dialog.returnValue === "save" && input.value.trim()) {
          setToken(input.value.trim());
          resolve(true);
        } else {
          if (dialog.returnValue === "clear") setToken("");
          resolve(false);
        }
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return pendingAsk;
}

async function errorOf(response) {
  let code = "HTTP_" + response.status;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    code = body.error_code || code;
    message = body.message || message;
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(response.status, code, message);
}

/**
 * Sends a request to the server. `body` (an object) is sent as JSON. Returns
 * the parsed JSON, or the `Response` itself with `raw: true`.
 */
export async function api(path, { method, body, headers = {}, raw = false, signal } = {}) {
  const init = {
    method: method || (body === undefined ? "GET" : "POST"),
    headers: { ...headers },
    signal,
    // The token goes in the header; no cookies or cached Basic credentials,
    // so a 401 reaches the page (and its token dialog) instead of the
    // browser's own login prompt.
    credentials: "omit",
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, { ...init, headers: authHeaders(init.headers) });
    if (response.status === 401 && attempt === 0) {
      if (await askToken("The server needs an API token for this request.")) continue;
    }
    if (!response.ok) throw await errorOf(response);
    return raw ? response : response.json();
  }
}

/** A number as the API writes it: a JSON number or "NaN"/"Infinity"/"-Infinity". */
export function num(value) {
  if (typeof value === "number") return value;
  if (value === "NaN") return NaN;
  if (value === "Infinity") return Infinity;
  if (value === "-Infinity") return -Infinity;
  return value == null ? null : Number(value);
}

/** Wires the header's token button to the dialog. */
export function initTokenButton() {
  const button = document.getElementById("token-button");
  const refresh = () => button.classList.toggle("has-token", Boolean(token()));
  button.addEventListener("click", async () => {
    await askToken();
    refresh();
  });
  refresh();
}
