// The list of evaluations: newest first, with status, progress and a thumbnail curve drawn from the
// list answer's summaries (GET /api/security_evaluations?include=summary: no request per row), and
// the unfinished rows refreshed until they end.

import { ApiError, api, badge, el, fileLabel, fileNames, fmtTime, missingEndpoint, progressOf, say } from "./common.js";
import { thumbnail } from "./curve.js";
import { defensesLabel } from "./defenses.js";

const PAGE = 200;
const MAX_ROWS = 2000;  // pages followed at most; beyond, the oldest are not shown
const POLL_MS = 1500;
const TERMINAL = new Set(["finished", "failed", "canceled"]);

const body = document.querySelector("#evaluations tbody");
const message = document.getElementById("list-message");
const compareButton = document.getElementById("compare-selected");
const rows = new Map();  // job id -> {row, view}
let names = {};

function requestLabel(req) {
  const eps = (req["perturbation-values"] || []).filter((v) => v > 0);
  const budget = eps.length ? ` ≤ ${Math.max(...eps)}` : "";
  const defended = Array.isArray(req.defenses) && req.defenses.length ? ` · defended: ${defensesLabel(req.defenses)}` : "";
  return `${req.attack || ""} ${req.norm || ""}${budget} · ${req["evaluation-mode"] || ""}${defended}`;
}

function cells(view) {
  const req = view.request || {};
  const { fraction, text } = progressOf(view);
  const summary = view.summary || {};
  const secValue = typeof summary["sec-value"] === "number"
    ? `${summary["sec-value"].toFixed(3)} (${summary["sec-level"] || ""})` : "";
  const reliable = summary.reliable === false ? el("span", { class: "badge warn", title: "a reliability check warns" }, "check") : "";
  return [
    el("td", {}, el("input", { type: "checkbox", class: "pick", value: view.job_id, "aria-label": "select for comparison",
      disabled: view["job-status"] !== "finished" })),
    el("td", { class: "nowrap" }, fmtTime(view.created_at)),
    el("td", {}, el("a", { href: `/evaluations/${encodeURIComponent(view.job_id)}`, class: "job-link" }, view.job_id.slice(0, 8))),
    el("td", { class: "name" }, fileLabel(names, req["trained-model"])),
    el("td", { class: "name" }, fileLabel(names, req.dataset)),
    el("td", {}, requestLabel(req)),
    el("td", {}, badge(view["job-status"])),
    el("td", { class: "nowrap" }, el("progress", { max: 1, value: fraction }), " ", el("span", { class: "muted" }, text)),
    el("td", {}, view["job-status"] === "finished" ? thumbnail(summary["sec-curve"]) : ""),
    el("td", { class: "nowrap" }, secValue, " ", reliable),
  ];
}

function render(view) {
  let entry = rows.get(view.job_id);
  if (!entry) {
    entry = { row: el("tr", { dataset: { job: view.job_id } }) };
    rows.set(view.job_id, entry);
    body.prepend(entry.row);  // pages come oldest first; newest on top
  }
  const picked = entry.row.querySelector("input.pick")?.checked;
  entry.view = view;
  entry.row.replaceChildren(...cells(view));
  if (picked) entry.row.querySelector("input.pick").checked = true;
}

function listPage(cursor) {
  return api(`/api/security_evaluations?include=summary&limit=${PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
}

async function load() {
  let page;
  [names, page] = await Promise.all([fileNames(), listPage(null)]);  // two round trips at once
  page.evaluations.forEach(render);
  let cursor = page["next-cursor"];
  while (cursor && rows.size < MAX_ROWS) {
    page = await listPage(cursor);
    page.evaluations.forEach(render);
    cursor = page["next-cursor"];
  }
  if (cursor) say(message, `Showing the ${rows.size} oldest evaluations of more.`);
  document.getElementById("list-empty").hidden = rows.size > 0;
}

async function refresh() {
  const pending = [...rows.values()].filter((e) => !TERMINAL.has(e.view["job-status"])).slice(0, 20);
  await Promise.all(pending.map(async ({ view }) => {
    try {
      const fresh = await api(`/api/security_evaluations/${view.job_id}`);
      if (fresh["job-status"] === "finished") fresh.summary = await summaryOf(view.job_id);
      render(fresh);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        rows.get(view.job_id)?.row.remove();
        rows.delete(view.job_id);
      }
    }
  }));
  setTimeout(refresh, POLL_MS);
}

async function summaryOf(jobId) {
  const output = await api(`/api/security_evaluations/${jobId}/output`);
  const keep = ["sec-curve", "clean-accuracy", "sec-value", "sec-level", "n-samples", "reliable"];
  return Object.fromEntries(keep.filter((k) => k in output).map((k) => [k, output[k]]));
}

function selection() {
  return [...body.querySelectorAll("input.pick:checked")].map((box) => box.value);
}

body.addEventListener("change", () => {
  compareButton.disabled = selection().length === 0;
});

compareButton.addEventListener("click", () => {
  window.location.href = `/compare?jobs=${selection().map(encodeURIComponent).join(",")}`;
});

const bulkButton = document.getElementById("bulk-delete");
const bulkStatus = document.getElementById("bulk-status");
let armed = false;
bulkButton.addEventListener("click", async () => {
  const status = bulkStatus.value;
  if (!armed) {
    armed = true;
    bulkButton.textContent = `Really delete every ${status} evaluation?`;
    setTimeout(() => { armed = false; bulkButton.textContent = "Delete…"; }, 5000);
    return;
  }
  armed = false;
  bulkButton.textContent = "Delete…";
  let deleted = 0;
  try {
    // Each call removes a bounded number ("more": call again).
    for (let calls = 0, more = true; more && calls < 100; calls++) {
      const answer = await api(`/api/security_evaluations?status=${encodeURIComponent(status)}`, { method: "DELETE" });
      for (const id of answer.ids || []) {
        rows.get(id)?.row.remove();
        rows.delete(id);
      }
      deleted += answer.deleted || 0;
      more = Boolean(answer.more) && (answer.deleted || 0) > 0;
    }
    say(message, `Deleted ${deleted} ${status} evaluation(s).`, "ok");
    document.getElementById("list-empty").hidden = rows.size > 0;
  } catch (err) {
    say(message, missingEndpoint(err) ? "This service has no bulk delete (DELETE /api/security_evaluations?status=)."
      : `Bulk delete failed: ${err.message}`, "error");
  }
});

load()
  .then(() => setTimeout(refresh, POLL_MS))
  .catch((err) => say(message, `Could not load the evaluations: ${err.message}`, "error"));
