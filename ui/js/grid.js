// A virtualized table for the runs table and SQL results: only the rows and
// columns in view are in the DOM (a few hundred cells whatever the size), so
// thousands of runs or keys scroll smoothly. Fixed row height and column
// widths; the first `frozen` columns stay in place when scrolling sideways;
// the header stays on top. Cells are HTML strings from each column's
// `cell(row)`, so callers escape what they render.

import { escapeHtml } from "./format.js";

const OVERSCAN_ROWS = 8;

export class Grid {
  /**
   * `onSort(columnId)` is called on a click on a sortable header,
   * `onClick(row, columnId, event)` on a click in a cell.
   */
  constructor(container, { rowHeight = 30, headerHeight = 42, frozen = 0, onSort, onClick, empty = "" } = {}) {
    this.rowHeight = rowHeight;
    this.headerHeight = headerHeight;
    this.frozen = frozen;
    this.onSort = onSort;
    this.onClick = onClick;
    this.emptyText = empty;
    this.columns = [];
    this.offsets = [0];
    this.rows = [];
    this.sort = { id: "", direction: 1 };
    this.rendered = "";
    this.root = document.createElement("div");
    this.root.className = "grid";
    this.root.tabIndex = 0;
    this.head = document.createElement("div");
    this.head.className = "grid-head";
    this.head.style.height = `${headerHeight}px`;
    this.body = document.createElement("div");
    this.body.className = "grid-body";
    this.empty = document.createElement("div");
    this.empty.className = "grid-empty";
    this.root.append(this.head, this.body, this.empty);
    container.append(this.root);
    let frame = 0;
    this.root.addEventListener("scroll", () => {
      if (!frame) {
        frame = requestAnimationFrame(() => {
          frame = 0;
          this.render();
        });
      }
    });
    new ResizeObserver(() => this.render()).observe(this.root);
    this.root.addEventListener("click", (event) => this.click(event));
  }

  /** Columns: `{id, label, group?, width, align?, sortable?, title?, cell(row)}`. */
  setColumns(columns) {
    this.columns = columns;
    this.offsets = [0];
    for (const column of columns) this.offsets.push(this.offsets.at(-1) + column.width);
    this.frozenWidth = this.offsets[Math.min(this.frozen, columns.length)];
    this.rendered = "";
    this.render();
  }

  setRows(rows) {
    this.rows = rows;
    this.rendered = "";
    this.render();
  }

  setSort(id, direction) {
    this.sort = { id, direction };
    this.rendered = "";
    this.render();
  }

  setEmptyText(text) {
    this.emptyText = text;
    this.render();
  }

  /** Redraws every visible cell (after the rows changed in place). */
  refresh() {
    this.rendered = "";
    this.render();
  }

  scrollToTop() {
    this.root.scrollTop = 0;
  }

  /** The indices of the columns in view, frozen ones first. */
  visibleColumns() {
    const count = this.columns.length;
    const frozen = Math.min(this.frozen, count);
    const left = this.root.scrollLeft + this.frozenWidth;
    const right = this.root.scrollLeft + this.root.clientWidth;
    let first = frozen;
    while (first < count && this.offsets[first + 1] <= left) first++;
    let last = first;
    while (last < count && this.offsets[last] < right) last++;
    const indices = [];
    for (let index = 0; index < frozen; index++) indices.push(index);
    for (let index = first; index < last; index++) indices.push(index);
    return { indices, spacer: this.offsets[first] - this.frozenWidth };
  }

  cellsHtml(indices, spacer, cellOf) {
    const parts = [];
    let spaced = false;
    for (const index of indices) {
      const column = this.columns[index];
      const frozen = index < this.frozen;
      if (!frozen && !spaced) {
        spaced = true;
        if (spacer > 0) parts.push(`<div class="grid-spacer" style="width:${spacer}px"></div>`);
      }
      const style = frozen
        ? `width:${column.width}px;left:${this.offsets[index]}px`
        : `width:${column.width}px`;
      parts.push(
        `<div class="grid-cell ${column.align || ""}${frozen ? " frozen" : ""}" style="${style}" data-col="${index}">${cellOf(column)}</div>`,
      );
    }
    return parts.join("");
  }

  render() {
    const width = this.offsets.at(-1);
    const height = this.rows.length * this.rowHeight;
    const viewHeight = this.root.clientHeight - this.headerHeight;
    const top = this.root.scrollTop;
    const firstRow = Math.max(0, Math.floor(top / this.rowHeight) - OVERSCAN_ROWS);
    const lastRow = Math.min(this.rows.length, Math.ceil((top + viewHeight) / this.rowHeight) + OVERSCAN_ROWS);
    const { indices, spacer } = this.visibleColumns();
    const key = `${firstRow}:${lastRow}:${indices.join(",")}`;
    this.empty.textContent = this.rows.length ? "" : this.emptyText;
    this.empty.hidden = Boolean(this.rows.length) || !this.emptyText;
    if (key === this.rendered) return;
    this.rendered = key;
    this.head.style.width = `${width}px`;
    this.body.style.width = `${width}px`;
    this.body.style.height = `${height}px`;
    this.head.innerHTML = this.cellsHtml(indices, spacer, (column) => {
      const sorted = this.sort.id === column.id ? (this.sort.direction > 0 ? " ▲" : " ▼") : "";
      const group = column.group ? `<span class="grid-group ${column.group}">${escapeHtml(column.group)}</span>` : "";
      const title = escapeHtml(column.title || column.label);
      const label = column.headerHtml ?? `${group}<span class="grid-label" title="${title}">${escapeHtml(column.label)}${sorted}</span>`;
      return column.sortable ? `<button type="button" class="grid-sort" data-sort="${escapeHtml(column.id)}">${label}</button>` : label;
    });
    const rows = [];
    for (let index = firstRow; index < lastRow; index++) {
      const row = this.rows[index];
      const cells = this.cellsHtml(indices, spacer, (column) => column.cell(row));
      const extra = row.rowClass ? ` ${row.rowClass}` : "";
      rows.push(
        `<div class="grid-row${index % 2 ? " odd" : ""}${extra}" data-row="${index}" style="top:${index * this.rowHeight}px;width:${width}px;height:${this.rowHeight}px">${cells}</div>`,
      );
    }
    this.body.innerHTML = rows.join("");
  }

  click(event) {
    const sort = event.target.closest("[data-sort]");
    if (sort && this.onSort) {
      this.onSort(sort.dataset.sort);
      return;
    }
    const rowElement = event.target.closest("[data-row]");
    const cell = event.target.closest("[data-col]");
    if (rowElement && cell && this.onClick) {
      const row = this.rows[Number(rowElement.dataset.row)];
      this.onClick(row, this.columns[Number(cell.dataset.col)].id, event);
    }
  }
}
