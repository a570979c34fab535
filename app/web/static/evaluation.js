// One evaluation: its status and progress, polled from the API while it runs; then the curve (with the
// undefended one beside it when the model was defended), the figures and checks, the downloads (JSON,
// CSV, PNG, SVG), the report (fetched with the key and shown in a sandboxed srcdoc iframe) and a delete button.

import { ApiError, api, badge, download, el, fileLabel, fileNames, fmtTime, missingEndpoint, pct, progressOf, say } from "./common.js";
import { COLORS, UNDEFENDED_DASH, chart, seriesOf, undefendedOf } from "./curve.js";
import { defensesLabel, stageLabel } from "./defenses.js";

const jobId = document.getElementById("main").dataset.job;
const base = `/api/security_evaluations/${encodeURIComponent(jobId)}`;
const message = document.getElementById("job-message");
const POLL_MS = 1000;
const DOWNLOADS = {
  json: [`${base}/output`, "evaluation.json"],
  csv: [`${base}/output/csv`, "evaluation.csv"],
  png: [`${base}/plot.png`, "evaluation.png"],
  svg: [`${base}/plot.svg`, "evaluation.svg"],
};
let names = {};

function fact(list, term, ...value) {
  list.append(el("dt", {}, term), el("dd", {}, ...value));
}

function showStatus(view) {
  const req = view.request || {};
  const facts = document.getElementById("facts");
  facts.replaceChildren();
  fact(facts, "model", fileLabel(names, req["trained-model"]));
  fact(facts, "dataset", fileLabel(names, req.dataset));
  fact(facts, "attack", `${req.attack} (${req.norm})`, " ", el("code", {}, JSON.stringify(req["attack-params"] || {})));
  if (Array.isArray(req.defenses) && req.defenses.length) fact(facts, "defenses", defensesLabel(req.defenses));
  fact(facts, "budgets", (req["perturbation-values"] || []).join(", "));
  fact(facts, "mode", req["evaluation-mode"] || "");
  fact(facts, "created", fmtTime(view.created_at));
  if (view.ended_at) fact(facts, "ended", fmtTime(view.ended_at));
  const status = document.getElementById("job-status");
  status.replaceWith(Object.assign(badge(view["job-status"]), { id: "job-status" }));
  const { fraction, text } = progressOf(view);
  document.getElementById("job-progress").value = fraction;
  document.getElementById("job-progress-text").textContent = text;
  const error = document.getElementById("job-error");
  error.hidden = !view.error;
  error.textContent = view.error ? `${view.error}${view.details ? ` (${JSON.stringify(view.details)})` : ""}` : "";
}

function table(head, rows) {
  return el("table", { class: "data" }, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))));
}

function showResult(output) {
  document.getElementById("result").hidden = false;
  const headline = document.getElementById("headline");
  headline.replaceChildren();
  fact(headline, "clean accuracy", pct(output["clean-accuracy"]));
  fact(headline, "sec-value", `${(output["sec-value"] ?? 0).toFixed(3)} (${output["sec-level"] || ""})`);
  fact(headline, "samples", String(output["n-samples"] ?? ""));
  if (typeof output.reliable === "boolean") {
    fact(headline, "reliable", el("span", { class: `badge ${output.reliable ? "pass" : "warn"}` },
      output.reliable ? "yes: every check passes" : "no: a check warns (below)"));
  }
  const attack = `${output.attack?.name || "attack"} ${output.attack?.norm || ""}`;
  const bare = undefendedOf(output);
  if (bare) showDefenses(headline, output, bare);
  document.getElementById("curve").replaceChildren(chart(bare
    ? [seriesOf(output, `${attack}, defended: ${defensesLabel(output.defenses)}`),
      { ...seriesOf(bare, "undefended"), color: COLORS[0], dash: UNDEFENDED_DASH }]
    : [seriesOf(output, attack)]));
  const checks = document.getElementById("checks");
  checks.replaceChildren();
  if (Array.isArray(output.checks)) {
    checks.append(el("h3", {}, "Checks"), el("ul", { class: "checks" }, output.checks.map((c) =>
      el("li", { class: c.status }, el("span", { class: `badge ${c.status}` }, c.status), " ", el("strong", {}, c.name), ": ", c.message))));
  }
  const rows = output.figures?.["per-epsilon"];
  const perEps = document.getElementById("per-epsilon");
  // With defenses, the bare model's accuracy at the same epsilon follows the defended one.
  const extra = (cells, cell) => (bare ? [...cells.slice(0, 2), cell, ...cells.slice(2)] : cells);
  const bareAt = (eps) => pct(bare?.accuracy.get(eps));
  if (Array.isArray(rows)) {
    const ci = (r) => (Array.isArray(r["accuracy-ci95"]) ? `${pct(r["accuracy-ci95"][0])} – ${pct(r["accuracy-ci95"][1])}` : "–");
    perEps.replaceChildren(el("h3", {}, "Per epsilon"), table(
      extra(["epsilon", "accuracy", "95% interval", "attack success", "true-class confidence", "samples"], "undefended"),
      rows.map((r) => extra([String(r.epsilon), pct(r.accuracy), ci(r), pct(r["attack-success-rate"]),
        pct(r["mean-true-confidence"]), String(r.n ?? "")], bareAt(r.epsilon)))));
  } else {
    const curve = output["sec-curve"] || {};
    perEps.replaceChildren(el("h3", {}, "Curve"), table(extra(["epsilon", "accuracy"], "undefended"),
      (curve["x-values"] || []).map((x, i) => extra([String(x), pct(curve["y-values"][i])], bareAt(x)))));
  }
}

/** The headline of a defended evaluation: its stages with their parameters, how it was attacked, and
 *  the bare model's figures on the same samples. */
function showDefenses(headline, output, bare) {
  const stages = Array.isArray(output.defenses) ? output.defenses : [];
  fact(headline, "defenses", el("ol", { class: "stages" }, stages.map((d) =>
    el("li", {}, stageLabel(d), d.random ? " (random: majority vote over draws; attacked with EOT)" : ""))));
  const adaptive = output["defense-params"]?.adaptive !== false;
  fact(headline, "adaptive", el("span", { class: `badge ${adaptive ? "pass" : "warn"}` }, adaptive
    ? "yes: attacked through the defenses" : "no: perturbations transferred from the undefended model (overstates the defense)"));
  fact(headline, "undefended", `clean accuracy ${pct(bare["clean-accuracy"])}, sec-value ${(bare["sec-value"] ?? 0).toFixed(3)} `
    + `(${bare["sec-level"] || ""})`);
}

async function showReport() {
  const panel = document.getElementById("report-panel");
  const note = document.getElementById("report-message");
  panel.hidden = false;
  say(note, "loading the report…");
  try {
    const html = await (await api(`${base}/report`, { raw: true })).text();
    const frame = document.getElementById("report");
    frame.addEventListener("load", () => {
      // allow-same-origin (never allow-scripts) lets this page size the frame to its content.
      const doc = frame.contentDocument;
      if (doc) frame.style.height = `${doc.documentElement.scrollHeight + 24}px`;
    });
    frame.srcdoc = html;
    frame.hidden = false;
    say(note, "");
  } catch (err) {
    say(note, missingEndpoint(err) ? "This service has no report yet (GET …/report is not available)."
      : `The report could not be loaded: ${err.message}`, "error");
  }
}

function enableDownloads() {
  for (const button of document.querySelectorAll("[data-download]")) button.disabled = false;
}

document.getElementById("downloads").addEventListener("click", async (event) => {
  const kind = event.target.dataset?.download;
  if (!kind) return;
  const note = document.getElementById("download-message");
  const [path, name] = DOWNLOADS[kind];
  try {
    await download(path, `${jobId.slice(0, 8)}-${name}`);
    say(note, `${name} downloaded`, "ok");
  } catch (err) {
    say(note, missingEndpoint(err) ? `This service cannot give the ${kind.toUpperCase()} yet (${path} is not available).`
      : `Download failed: ${err.message}`, "error");
  }
});

const deleteButton = document.getElementById("delete");
deleteButton.addEventListener("click", async () => {
  if (deleteButton.dataset.armed !== "yes") {
    deleteButton.dataset.armed = "yes";
    deleteButton.textContent = "Really delete? Click again";
    setTimeout(() => { deleteButton.dataset.armed = ""; deleteButton.textContent = "Delete…"; }, 5000);
    return;
  }
  try {
    await api(base, { method: "DELETE" });
    window.location.href = "/";
  } catch (err) {
    say(message, `Delete failed: ${err.message}`, "error");
  }
});

async function poll() {
  let view;
  try {
    view = await api(base);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      say(message, `No such evaluation (${err.message}): it may have been deleted.`, "error");
      return;
    }
    say(message, `Could not read the status: ${err.message}; retrying…`, "error");
    setTimeout(poll, POLL_MS * 3);
    return;
  }
  say(message, "");
  showStatus(view);
  if (view["job-status"] === "finished") {
    showResult(await api(`${base}/output`));
    enableDownloads();
    await showReport();
  } else if (!["failed", "canceled"].includes(view["job-status"])) {
    setTimeout(poll, POLL_MS);
  }
}

fileNames().then((found) => { names = found; }).finally(poll);
