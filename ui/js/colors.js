// Run colors: a run keeps the color of its place in the selection, the same
// in the runs table, the chart lines, the legend and the tooltips.

const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
  "#393b79", "#e6550d", "#31a354", "#ad494a", "#756bb1",
  "#843c39", "#de9ed6", "#3182bd", "#8c6d31", "#636363",
];

/** The color of the `index`-th selected run. */
export function colorAt(index) {
  return PALETTE[index % PALETTE.length];
}

/** `color` with opacity `alpha` (for the raw curve behind a smoothed one). */
export function faded(color, alpha) {
  const value = parseInt(color.slice(1), 16);
  return `rgba(${value >> 16}, ${(value >> 8) & 255}, ${value & 255}, ${alpha})`;
}
