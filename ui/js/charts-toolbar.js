// The charts view's toolbar: the keys (chips of exact keys and globs, an
// input with the runs' keys as suggestions), the x axis, the smoothing
// slider, the zoom range with its reset button, and the live status. It
// changes the selection through `update()`; `sync()` shows the selection.

import { formatCount, formatSeconds, formatTime, h } from "./format.js";
import { state, update } from "./state.js";

/** Key suggestions listed at most. */
const SUGGESTIONS = 500;

export class ChartsToolbar {
  constructor(onResetZoom) {
    this.known = new Set();
    this.keyChips = h("div.key-chips");
    this.keyOptions = h("datalist", { id: "key-options" });
    this.keyInput = h("input.key-input", {
      type: "text",
      list: "key-options",
      placeholder: "Add a key or glob (train/*)",
      "aria-label": "Add a metric key or glob",
      spellcheck: "false",
    });
    const keyForm = h(
      "form.key-form",
      {
        onsubmit: (event) => {
          event.preventDefault();
          this.addKeys(this.keyInput.value);
        },
      },
      h("span.toolbar-label", {}, "Keys"),
      this.keyChips,
      this.keyInput,
      this.keyOptions,
    );
    this.keyInput.addEventListener("change", () => {
      // Picking a suggestion from the list adds it at once.
      if (this.known.has(this.keyInput.value)) this.addKeys(this.keyInput.value);
    });
    this.xSelect = h(
      "select",
      { "aria-label": "x axis", onchange: () => update({ x: this.xSelect.value, range: null }) },
      h("option", { value: "step" }, "Step"),
      h("option", { value: "wall_time" }, "Wall time"),
      h("option", { value: "relative_time" }, "Relative time"),
    );
    this.smoothInput = h("input", { type: "range", min: "0", max: "0.99", step: "0.01", value: "0", "aria-label": "Smoothing" });
    this.smoothValue = h("output.smooth-value", {}, "0");
    let smoothTimer = 0;
    this.smoothInput.addEventListener("input", () => {
      this.smoothValue.textContent = Number(this.smoothInput.value).toFixed(2);
      clearTimeout(smoothTimer);
      smoothTimer = setTimeout(() => update({ smooth: Number(this.smoothInput.value) }), 250);
    });
    this.zoomText = h("span.zoom-text");
    this.resetButton = h("button.ghost", { type: "button", onclick: onResetZoom }, "Reset zoom");
    this.liveText = h("span.live-text");
    this.root = h(
      "div.toolbar.charts-toolbar",
      {},
      keyForm,
      h("label.toolbar-field", {}, h("span.toolbar-label", {}, "x"), this.xSelect),
      h(
        "label.toolbar-field",
        { title: "Exponential moving average computed by the server over every point; the raw curve stays faint behind" },
        h("span.toolbar-label", {}, "Smoothing"),
        this.smoothInput,
        this.smoothValue,
      ),
      h("span.zoom", {}, this.zoomText, this.resetButton),
      h("span.spacer"),
      this.liveText,
    );
  }

  /** Shows the selection (after a change or back/forward). */
  sync() {
    this.xSelect.value = state.x;
    this.smoothInput.value = String(state.smooth);
    this.smoothValue.textContent = state.smooth.toFixed(2);
    const range = state.range;
    this.resetButton.hidden = !range;
    if (range) {
      const text =
        state.x === "step"
          ? `steps ${formatCount(range[0])} – ${formatCount(range[1])}`
          : state.x === "wall_time"
            ? `${formatTime(range[0] * 1000)} – ${formatTime(range[1] * 1000)}`
            : `${formatSeconds(range[0])} – ${formatSeconds(range[1])}`;
      this.zoomText.textContent = `Zoomed to ${text}`;
    } else this.zoomText.textContent = "Drag on a chart to zoom";
    this.keyChips.replaceChildren(
      ...(state.keys.length
        ? state.keys.map((pattern) =>
            h(
              "span.chip",
              {},
              pattern,
              h("button.chip-remove", { type: "button", title: `Remove ${pattern}`, onclick: () => this.removeKey(pattern) }, "×"),
            ),
          )
        : [h("span.chip.muted", {}, "all keys")]),
    );
  }

  addKeys(text) {
    const added = text
      .split(",")
      .map((key) => key.trim())
      .filter(Boolean);
    this.keyInput.value = "";
    if (added.length) update({ keys: [...new Set([...state.keys, ...added])] });
  }

  removeKey(pattern) {
    update({ keys: state.keys.filter((key) => key !== pattern) });
  }

  /** The keys offered while typing. */
  suggest(keys) {
    this.known = new Set(keys);
    this.keyOptions.replaceChildren(...keys.slice(0, SUGGESTIONS).map((key) => h("option", { value: key })));
  }

  /** Sets the live status; returns whether it changed. */
  setLive(text) {
    if (text === this.liveText.textContent) return false;
    this.liveText.textContent = text;
    return true;
  }
}
