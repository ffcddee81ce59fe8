// Messages for the user: an error banner above the views (dismissable),
// and the short status text in the header (live streams, loading).

import { h } from "./format.js";

/** Shows an error above the current view until dismissed or replaced. */
export function showError(message) {
  let banner = document.getElementById("error-banner");
  if (!banner) {
    banner = h("div.error-banner", { id: "error-banner", role: "alert" });
    document.getElementById("main").prepend(banner);
  }
  banner.replaceChildren(
    h("span", {}, message),
    h("button.ghost", { type: "button", onclick: () => banner.remove(), "aria-label": "Dismiss" }, "×"),
  );
}

export function clearError() {
  document.getElementById("error-banner")?.remove();
}

/** Sets the header's status text. */
export function setStatus(text) {
  document.getElementById("status-line").textContent = text;
}
