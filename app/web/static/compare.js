// Several finished evaluations on one plot and in one table (?jobs=<id>,<id>); with none given, a
// picker of the finished ones. A defended evaluation also shows its undefended curve, dashed in its
// colour. The combined PNG comes from GET /api/plots?jobs=….

import { ApiError, api, download, el, fileLabel, fileNames, missingEndpoint, pct, say } from "./common.js";
import { COLORS, UNDEFENDED_DASH, chart, seriesOf, swatch, thumbnail, undefendedOf } from "./curve.js";
import { defensesLabel } from "./defenses.js";

const MAX_JOBS = 10;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const message = document.getElementById("compare-message");
const wanted = (new URLSearchParams(window.location.search).get("jobs") || "").split(",").filter((id) => UUID.test(id));

function label(view, names) {
  const req = view.request || {};
  return `${fileLabel(names, req["trained-model"])} · ${req.attack} ${req.norm} · ${view.job_id.slice(0, 8)}`;
}

async function picker(names) {
  document.getElementById("picker").hidden = false;
  const page = await api("/api/security_evaluations?status=finished&include=summary&limit=200");
  const list = document.getElementById("choices");
  list.replaceChildren(...page.evaluations.slice().reverse().map((view) => el("li", {},
    el("label", {}, el("input", { type: "checkbox", value: view.job_id }), " ", thumbnail(view.summary?.["sec-curve"], 80, 24),
      " ", label(view, names)))));
  if (!page.evaluations.length) say(message, "No finished evaluations to compare yet.");
  document.getElementById("compare-go").addEventListener("click", () => {
    const ids = [...list.querySelectorAll("input:checked")].map((box) => box.value).slice(0, MAX_JOBS);
    if (ids.length) window.location.search = `?jobs=${ids.join(",")}`;
  });
}

async function compare(ids, names) {
  const loaded = [];
  for (const id of ids) {
    try {
      const view = await api(`/api/security_evaluations/${id}`);
      if (view["job-status"] !== "finished") {
        say(message, `${id.slice(0, 8)} is ${view["job-status"]}: only finished evaluations are compared.`, "error");
        continue;
      }
      loaded.push({ view, output: await api(`/api/security_evaluations/${id}/output`) });
    } catch (err) {
      say(message, `${id.slice(0, 8)}: ${err.message}`, "error");
    }
  }
  if (!loaded.length) return;
  document.getElementById("comparison").hidden = false;
  const series = loaded.flatMap(({ view, output }, i) => {
    const color = COLORS[i % COLORS.length];
    const bare = undefendedOf(output);
    if (!bare) return [{ ...seriesOf(output, label(view, names)), color }];
    return [{ ...seriesOf(output, `${label(view, names)}, defended`), color },
      { ...seriesOf(bare, `${label(view, names)}, undefended`), color, dash: UNDEFENDED_DASH }];
  });
  document.getElementById("compare-curve").replaceChildren(chart(series));
  const head = ["", "evaluation", "model", "dataset", "attack", "defenses", "clean accuracy", "accuracy at the largest epsilon",
    "undefended at the largest epsilon", "sec-value", "reliable"];
  const last = (curve) => {
    const xs = curve?.["x-values"] || [];
    return xs.length ? `${pct(curve["y-values"][xs.length - 1])} at ${xs[xs.length - 1]}` : "–";
  };
  const rows = loaded.map(({ view, output }, i) => {
    const req = view.request || {};
    const bare = undefendedOf(output);
    return [swatch(COLORS[i % COLORS.length]),
      el("a", { href: `/evaluations/${view.job_id}` }, view.job_id.slice(0, 8)),
      fileLabel(names, req["trained-model"]), fileLabel(names, req.dataset), `${req.attack} ${req.norm}`,
      bare ? defensesLabel(output.defenses) : "none",
      pct(output["clean-accuracy"]), last(output["sec-curve"]), bare ? last(bare["sec-curve"]) : "–",
      `${(output["sec-value"] ?? 0).toFixed(3)} (${output["sec-level"] || ""})`,
      typeof output.reliable === "boolean" ? (output.reliable ? "yes" : "no") : "–"];
  });
  document.getElementById("compare-table").replaceChildren(el("table", { class: "data", id: "compare-rows" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
  document.getElementById("compare-png").addEventListener("click", async () => {
    try {
      await download(`/api/plots?jobs=${loaded.map(({ view }) => view.job_id).join(",")}`, "comparison.png");
    } catch (err) {
      say(message, missingEndpoint(err) ? "This service has no combined plot yet (GET /api/plots is not available)."
        : `Download failed: ${err.message}`, "error");
    }
  });
}

fileNames()
  .then((names) => (wanted.length ? compare(wanted.slice(0, MAX_JOBS), names) : picker(names)))
  .catch((err) => say(message, `Could not load: ${err instanceof ApiError ? err.describe() : err.message}`, "error"));
