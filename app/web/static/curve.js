// Accuracy-against-epsilon curves drawn as inline SVG from the output's numbers: a thumbnail for the
// list, and a chart with axes, the 95% interval band and a legend for the evaluation and compare pages.
// Built with createElementNS and text nodes only: nothing a user typed is ever parsed as markup.

const NS = "http://www.w3.org/2000/svg";
// A defended evaluation's undefended curve: its own colour, dashed (as the PNG and SVG plots draw it).
export const UNDEFENDED_DASH = "6 4";
export const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7ea4", "#cf222e", "#57606a"];

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.append(document.createTextNode(String(text)));
  return node;
}

function points(xs, ys, sx, sy) {
  return xs.map((x, i) => `${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join(" ");
}

function finite(values) {
  return Array.isArray(values) && values.every((v) => typeof v === "number" && Number.isFinite(v));
}

/** A tiny polyline of a sec-curve ({x-values, y-values}); accuracy axis fixed to [0, 1]. */
export function thumbnail(curve, width = 120, height = 36) {
  const root = svg("svg", { class: "thumb", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  const xs = curve && curve["x-values"];
  const ys = curve && curve["y-values"];
  if (!finite(xs) || !finite(ys) || xs.length !== ys.length || !xs.length) return root;
  const maxX = Math.max(...xs) || 1;
  const sx = (x) => 2 + (x / maxX) * (width - 4);
  const sy = (y) => 2 + (1 - y) * (height - 4);
  root.append(svg("title", {}, `accuracy ${ys.map((y) => y.toFixed(2)).join(" → ")}`));
  root.append(svg("line", { x1: 2, x2: width - 2, y1: height - 2, y2: height - 2, class: "axis" }));
  root.append(svg("polyline", { points: points(xs, ys, sx, sy), class: "line", fill: "none" }));
  return root;
}

function ticks(max, count) {
  const raw = max / count;
  const step = [1, 2, 2.5, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw || 1))).find((s) => s >= raw) || raw;
  const out = [];
  for (let t = 0; t <= max + step * 1e-9; t += step) out.push(Number(t.toPrecision(6)));
  return out;
}

/** A chart of several series [{label, x, y, lo, hi, color, dash}] (lo/hi: the interval band; color, dash:
 *  a stroke colour and an SVG dash pattern; all optional). */
export function chart(series, { width = 640, height = 340, xLabel = "epsilon (fraction of the input range)" } = {}) {
  const m = { left: 52, right: 16, top: 14, bottom: 44 };
  const root = svg("svg", { class: "chart-svg", viewBox: `0 0 ${width} ${height}`, role: "img" });
  root.append(svg("title", {}, "accuracy against epsilon"));
  const usable = series.filter((s) => finite(s.x) && finite(s.y) && s.x.length === s.y.length && s.x.length);
  const maxX = Math.max(1e-9, ...usable.flatMap((s) => s.x));
  const sx = (x) => m.left + (x / maxX) * (width - m.left - m.right);
  const sy = (y) => m.top + (1 - y) * (height - m.top - m.bottom);
  const grid = svg("g", { class: "grid" });
  for (const t of ticks(1, 5)) {
    grid.append(svg("line", { x1: m.left, x2: width - m.right, y1: sy(t), y2: sy(t) }));
    grid.append(svg("text", { x: m.left - 6, y: sy(t) + 4, "text-anchor": "end" }, t.toFixed(1)));
  }
  for (const t of ticks(maxX, 6)) {
    grid.append(svg("line", { x1: sx(t), x2: sx(t), y1: m.top, y2: height - m.bottom }));
    grid.append(svg("text", { x: sx(t), y: height - m.bottom + 16, "text-anchor": "middle" }, String(t)));
  }
  root.append(grid);
  root.append(svg("text", { class: "axis-label", x: (m.left + width - m.right) / 2, y: height - 8, "text-anchor": "middle" }, xLabel));
  root.append(svg("text", { class: "axis-label", x: 14, y: (m.top + height - m.bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 14 ${(m.top + height - m.bottom) / 2})` }, "accuracy"));
  usable.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    if (finite(s.lo) && finite(s.hi) && s.lo.length === s.x.length && s.hi.length === s.x.length) {
      const band = points(s.x, s.hi, sx, sy) + " " + points([...s.x].reverse(), [...s.lo].reverse(), sx, sy);
      root.append(svg("polygon", { points: band, fill: color, "fill-opacity": 0.15, stroke: "none", class: "band" }));
    }
    const dash = s.dash ? { "stroke-dasharray": s.dash } : {};
    root.append(svg("polyline", { points: points(s.x, s.y, sx, sy), fill: "none", stroke: color, "stroke-width": 2, class: "series", ...dash }));
    s.x.forEach((x, k) => {
      const dot = svg("circle", { cx: sx(x).toFixed(1), cy: sy(s.y[k]).toFixed(1), r: 3, fill: color });
      dot.append(svg("title", {}, `${s.label}: epsilon ${x}, accuracy ${s.y[k].toFixed(3)}`));
      root.append(dot);
    });
  });
  const legend = document.createElement("ul");
  legend.className = "legend";
  usable.forEach((s, i) => {
    const item = document.createElement("li");
    item.append(swatch(s.color || COLORS[i % COLORS.length], s.dash), document.createTextNode(s.label));
    legend.append(item);
  });
  const box = document.createElement("figure");
  box.append(root, legend);
  return box;
}

/** A legend key: a filled square, or, for a dashed series, a short stroke with the same dash. */
export function swatch(color, dash) {
  if (!dash) {
    const square = document.createElement("span");
    square.className = "swatch";
    square.style.background = color;
    return square;
  }
  const key = svg("svg", { class: "swatch line", width: 28, height: 10, viewBox: "0 0 28 10", "aria-hidden": "true" });
  key.append(svg("line", { x1: 1, x2: 27, y1: 5, y2: 5, stroke: color, "stroke-width": 2, "stroke-dasharray": dash }));
  return key;
}

/** One chart series from an evaluation's output, with the Wilson band when the output has figures. */
export function seriesOf(output, label) {
  const curve = output["sec-curve"] || {};
  const rows = output.figures && Array.isArray(output.figures["per-epsilon"]) ? output.figures["per-epsilon"] : null;
  const band = rows && rows.length === (curve["x-values"] || []).length && rows.every((r) => Array.isArray(r["accuracy-ci95"]));
  return {
    label,
    x: curve["x-values"],
    y: curve["y-values"],
    lo: band ? rows.map((r) => r["accuracy-ci95"][0]) : null,
    hi: band ? rows.map((r) => r["accuracy-ci95"][1]) : null,
  };
}

/** The output's undefended sweep (a defended evaluation's only), with its accuracy by epsilon; else null. */
export function undefendedOf(output) {
  const bare = output.undefended;
  const curve = bare && typeof bare === "object" ? bare["sec-curve"] : null;
  if (!curve || !Array.isArray(curve["x-values"]) || !Array.isArray(curve["y-values"])) return null;
  return { ...bare, accuracy: new Map(curve["x-values"].map((x, i) => [x, curve["y-values"][i]])) };
}
