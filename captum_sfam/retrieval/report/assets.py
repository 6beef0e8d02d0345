r"""The report's style sheet and script, written beside ``index.html``.

The script (plain JavaScript, no library) sorts the query rows and runs the
correspondence viewer: opening a pair injects a ``<script>`` tag for its
``pairs/<pair>.js`` file (``fetch`` of ``file://`` URLs is blocked by
Chromium, a script tag is not), which calls ``sfamPair(id, data)`` with the
pair's point-to-point scores at the layer's resolution (quantised, see
:mod:`.pairs`; decoded to ``s``, row-major (h, w, h', w')). Hovering or
tapping a cell of the query paints that cell's scores over the neighbour
(min-max scaled, the maps' blue-to-red colours), and the other way round.
"""

from __future__ import annotations

STYLE = """
body { font-family: sans-serif; margin: 1em; background: #fafafa; }
table.run { border-collapse: collapse; }
tr.query td { vertical-align: top; padding: 4px; border-bottom: 1px solid #ccc; }
figure { margin: 0; text-align: center; }
figure img { display: block; margin: 2px auto; }
figcaption { font-size: 11px; max-width: 150px; overflow-wrap: anywhere; }
td.hit img.neighbour-map { outline: 3px solid #2a2; }
td.miss img.neighbour-map { outline: 3px solid #c22; }
td.query-cell { background: #eef; }
td.missed { background: #fff4e0; font-size: 11px; max-width: 170px; }
td.missed figure { display: inline-block; margin: 2px; }
td.missed figcaption { max-width: 64px; }
img.wrong-contrast-map { outline: 3px dashed #c22; }
.note { font-size: 11px; color: #844; max-width: 150px; }
.keys { font-size: 11px; color: #333; }
table.metrics td, table.metrics th { padding: 2px 8px; border: 1px solid #ccc; }
#summary { display: flex; flex-wrap: wrap; align-items: flex-start; gap: 8px; }
.plots img { margin: 2px; border: 1px solid #ddd; background: #fff; }
button.pair-link { font-size: 11px; cursor: pointer; }
#viewer { position: fixed; top: 8px; right: 8px; background: #fff; z-index: 10;
  border: 2px solid #446; padding: 8px; box-shadow: 0 2px 12px #0006; }
#viewer .stages { display: flex; gap: 12px; }
#viewer .stage { position: relative; display: inline-block; touch-action: none; }
#viewer .stage img { display: block; width: 256px; height: 256px; }
#viewer .stage canvas { position: absolute; left: 0; top: 0; width: 256px;
  height: 256px; opacity: 0.6; pointer-events: none; }
#viewer .title { font-size: 12px; max-width: 530px; overflow-wrap: anywhere; }
"""

SCRIPT = r"""
"use strict";
(function () {
  const COLORS = [
    [0, 0, 0.55], [0, 0.45, 1], [0.1, 0.9, 0.4], [1, 0.85, 0], [0.85, 0, 0]];
  function colour(v) {
    const x = Math.min(1, Math.max(0, v)) * 4;
    const i = Math.min(3, Math.floor(x));
    const t = x - i;
    return COLORS[i].map((c, j) => Math.round(255 * (c + t * (COLORS[i + 1][j] - c))));
  }
  const pairs = {};
  const pending = {};
  window.sfamPair = function (id, data) {
    const bytes = atob(data.u8);
    const span = (data.high - data.low) / 255;
    data.s = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) {
      data.s[i] = data.low + span * bytes.charCodeAt(i);
    }
    pairs[id] = data;
    if (pending[id]) { pending[id](data); delete pending[id]; }
  };
  const viewer = document.getElementById("viewer");
  const status = document.getElementById("viewer-status");
  const stages = {
    query: { img: document.getElementById("viewer-query"),
             canvas: document.getElementById("viewer-query-overlay") },
    neighbour: { img: document.getElementById("viewer-neighbour"),
                 canvas: document.getElementById("viewer-neighbour-overlay") },
  };
  let current = null;

  function load(id, done) {
    if (pairs[id]) { done(pairs[id]); return; }
    pending[id] = done;
    const tag = document.createElement("script");
    tag.src = "pairs/" + id + ".js";
    tag.onerror = function () {
      status.textContent = "could not read pairs/" + id + ".js";
    };
    document.head.appendChild(tag);
  }
  // values (rows x cols, row-major) min-max scaled and coloured
  function heat(canvas, values, rows, cols) {
    canvas.width = cols; canvas.height = rows;
    canvas.style.imageRendering = "auto";
    let low = Infinity, high = -Infinity;
    for (const v of values) { low = Math.min(low, v); high = Math.max(high, v); }
    const span = high > low ? high - low : 1;
    const context = canvas.getContext("2d");
    const image = context.createImageData(cols, rows);
    values.forEach(function (v, k) {
      const rgb = colour((v - low) / span);
      image.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * k);
    });
    context.putImageData(image, 0, 0);
  }
  // the hovered cell, outlined on the side the pointer is on
  function mark(canvas, rows, cols, cell) {
    canvas.width = cols * 8; canvas.height = rows * 8;
    canvas.style.imageRendering = "pixelated";
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.fillStyle = "rgba(255,255,255,0.7)";
    context.fillRect(cell[1] * 8, cell[0] * 8, 8, 8);
    context.strokeStyle = "#000"; context.lineWidth = 1.5;
    context.strokeRect(cell[1] * 8 + 0.75, cell[0] * 8 + 0.75, 6.5, 6.5);
  }
  function cellAt(event, img, rows, cols) {
    const box = img.getBoundingClientRect();
    const y = (event.clientY - box.top) / box.height;
    const x = (event.clientX - box.left) / box.width;
    if (!(x >= 0 && x < 1 && y >= 0 && y < 1)) return null;
    return [Math.min(rows - 1, Math.floor(y * rows)),
            Math.min(cols - 1, Math.floor(x * cols))];
  }
  function hover(side, event) {
    if (!current) return;
    const d = current;
    const here = side === "query" ? [d.h, d.w] : [d.h2, d.w2];
    const there = side === "query" ? [d.h2, d.w2] : [d.h, d.w];
    const cell = cellAt(event, stages[side].img, here[0], here[1]);
    if (!cell) return;
    const other = side === "query" ? "neighbour" : "query";
    const size = d.h2 * d.w2;
    let values;
    if (side === "query") {
      const start = (cell[0] * d.w + cell[1]) * size;
      values = Array.from(d.s.slice(start, start + size));
    } else {
      const column = cell[0] * d.w2 + cell[1];
      values = [];
      for (let k = 0; k < d.h * d.w; k++) values.push(d.s[k * size + column]);
    }
    heat(stages[other].canvas, values, there[0], there[1]);
    mark(stages[side].canvas, here[0], here[1], cell);
    stages[side].canvas.dataset.cell = cell.join(",");
    stages[other].canvas.dataset.from = side + ":" + cell.join(",");
    viewer.dataset.hovered = side + ":" + cell.join(",");
  }
  ["query", "neighbour"].forEach(function (side) {
    const stage = stages[side].img.parentElement;
    stage.addEventListener("pointermove", function (e) { hover(side, e); });
    stage.addEventListener("pointerdown", function (e) { hover(side, e); });
  });
  function clear(canvas) {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  }
  function open(button) {
    const id = button.dataset.pair;
    current = null;
    viewer.hidden = false;
    viewer.dataset.loaded = "";
    stages.query.img.src = button.dataset.query;
    stages.neighbour.img.src = button.dataset.neighbour;
    document.getElementById("viewer-title").textContent = button.dataset.title;
    status.textContent = "loading pairs/" + id + ".js";
    clear(stages.query.canvas); clear(stages.neighbour.canvas);
    load(id, function (data) {
      current = data;
      viewer.dataset.loaded = id;
      status.textContent =
        "hover or tap a cell of either image: where it matches in the other";
    });
  }
  document.querySelectorAll("button.pair-link").forEach(function (button) {
    button.addEventListener("click", function () { open(button); });
  });
  document.getElementById("viewer-close").addEventListener("click", function () {
    viewer.hidden = true;
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape") viewer.hidden = true;
  });

  // sorting the query rows
  const select = document.getElementById("sort");
  select.addEventListener("change", function () {
    const option = select.options[select.selectedIndex];
    const key = option.value;
    const ascending = option.dataset.ascending === "1";
    const body = document.querySelector("table.run tbody");
    const rows = Array.from(body.querySelectorAll("tr.query"));
    function value(row) {
      const text = row.dataset[key];
      return text === undefined || text === "" ? null : Number(text);
    }
    rows.sort(function (a, b) {
      const x = value(a), y = value(b);
      if (x === null || y === null) {
        if (x === y) return Number(a.dataset.worst) - Number(b.dataset.worst);
        return x === null ? 1 : -1;
      }
      if (x !== y) return ascending ? x - y : y - x;
      return Number(a.dataset.worst) - Number(b.dataset.worst);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
})();
"""

__all__ = ["SCRIPT", "STYLE"]
