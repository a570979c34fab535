// The form: pick or upload a model and a dataset, pick the attack, norm, budgets, defenses and mode, submit.
// Values go to the API as typed (numbers when they read as numbers): the API judges them, and its
// error appears next to the field it names.

import { ApiError, api, clearErrors, el, missingEndpoint, say, showError } from "./common.js";
import { defenseForm } from "./defenses.js";
import { paperOf, paramField, paramValues, specOf } from "./params.js";

const form = document.getElementById("evaluation-form");
const general = document.getElementById("form-message");
const fallback = JSON.parse(document.getElementById("fallback-attacks").textContent);
const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;
const WAITING = { model: "verifying", dataset: "validating" };
let attacks = [];
let defenseRequest = () => ({});  // {defenses, defense-params} once the Defenses fieldset is set up

/** A typed value: a number when it reads as one, else the text itself (so the API names the field). */
function value(text) {
  const t = text.trim();
  return NUMBER.test(t) ? Number(t) : t;
}

function list(text) {
  return text.split(/[\s,;]+/).filter(Boolean).map(value);
}

// -- models and datasets ------------------------------------------------------
async function fillFiles(kind, selectId, chosen) {
  const select = document.getElementById(selectId);
  const page = await api(`/api/${kind}s?limit=1000`);
  const options = [el("option", { value: "" }, `(choose an uploaded ${kind})`)];
  for (const item of page[`${kind}s`].slice().reverse()) {
    const usable = item.status === "ready";
    const extra = kind === "dataset" && item["n-samples"] ? `, ${item["n-samples"]} samples` : "";
    options.push(el("option", { value: item.id, disabled: !usable },
      `${item.name} (${item.status}${extra}, ${item.id.slice(0, 8)})`));
  }
  select.replaceChildren(...options);
  if (chosen) select.value = chosen;
}

async function upload(kind, input) {
  const state = document.getElementById(`${kind}-upload-state`);
  const slot = form.querySelector(`[data-error-for="${kind}-file"]`);
  slot.textContent = "";
  const file = input.files[0];
  if (!file) return;
  const data = new FormData();
  data.append("file", file, file.name);
  say(state, `uploading ${file.name}…`);
  try {
    let meta = await api(`/api/${kind}s`, { method: "POST", form: data });
    while (meta.status === WAITING[kind]) {
      say(state, `${meta.name}: ${meta.status} (the service checks it)…`);
      await new Promise((resolve) => setTimeout(resolve, 500));
      meta = await api(`/api/${kind}s/${meta.id}`);
    }
    if (meta.status !== "ready") {
      say(state, "");
      slot.textContent = `${meta.name} is ${meta.status}: ${meta.reason || "refused"}`;
      return;
    }
    await fillFiles(kind, kind === "model" ? "trained-model" : "dataset", meta.id);
    say(state, `${meta.name} uploaded and ready`, "ok");
    input.value = "";
  } catch (err) {
    say(state, "");
    slot.textContent = err instanceof ApiError ? err.describe() : String(err);
  }
}

// -- attacks and their parameters ----------------------------------------------
/** Attacks as [{name, paper, parameters: {name: {default, ...}}}] from /api/attacks or the page's fallback. */
function normalize(answer) {
  const raw = Array.isArray(answer) ? answer : answer.attacks;
  const items = Array.isArray(raw) ? raw : Object.entries(raw || {}).map(([name, spec]) => ({ name, ...spec }));
  return items.map((a) => ({ name: a.name || a.id, title: a.title, paper: a.paper, description: a.description,
    parameters: specOf(a.parameters || a.params || a["attack-params"]), random: a["perturbation-type"] === "random" }))
    .filter((a) => a.name);
}

function showParams() {
  const attack = selectedAttack();
  const box = document.getElementById("attack-params");
  box.replaceChildren(...Object.entries(attack ? attack.parameters : {}).map(([n, s]) => paramField(n, s)));
  document.getElementById("attack-info").replaceChildren(...(attack ? [attack.description || "", " ", paperOf(attack.paper)] : []));
}

function selectedAttack() {
  return attacks.find((a) => a.name === document.getElementById("attack").value);
}

async function loadAttacks() {
  let answer = null;
  try {
    answer = await api("/api/attacks");
    attacks = normalize(answer);
  } catch (err) {
    if (!missingEndpoint(err)) throw err;
    attacks = [];
  }
  defenseRequest = defenseForm(answer, value);
  if (!attacks.length) attacks = normalize(fallback);
  const select = document.getElementById("attack");
  select.replaceChildren(...attacks.map((a) => el("option", { value: a.name, selected: a.name === "pgd" },
    a.random ? `${a.name} (random-noise baseline, no attack)` : a.title ? `${a.name}: ${a.title}` : a.name)));
  document.getElementById("norm").replaceChildren(...fallback.norms.map((n) => el("option", { value: n }, n)));
  document.getElementById("perturbation-values").value = fallback["perturbation-values"].join(", ");
  showParams();
}

// -- the request ---------------------------------------------------------------
function request() {
  const body = {
    "trained-model": form.elements["trained-model"].value,
    dataset: form.elements.dataset.value,
    attack: form.elements.attack.value,
    norm: form.elements.norm.value,
    "perturbation-values": list(form.elements["perturbation-values"].value),
    "evaluation-mode": form.querySelector("input[name=evaluation-mode]:checked").value,
  };
  body["attack-params"] = paramValues(document.getElementById("attack-params"), value);
  if (selectedAttack()?.random) {  // the noise baseline is a perturbation type, not an attack
    body["perturbation-type"] = "random";
    delete body.attack;
  }
  const pre = form.elements.preprocessing.value;
  if (pre === "none") body.preprocessing = {};
  if (pre === "custom") {
    body.preprocessing = { mean: list(document.getElementById("preprocessing-mean").value),
      std: list(document.getElementById("preprocessing-std").value) };
  }
  for (const name of ["batch-size", "seed"]) {
    const text = form.elements[name].value;
    if (text.trim()) body[name] = value(text);
  }
  if (form.elements["input-bounds"].value.trim()) body["input-bounds"] = list(form.elements["input-bounds"].value);
  return Object.assign(body, defenseRequest());
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors(form, general);
  const button = document.getElementById("submit");
  button.disabled = true;
  say(general, "submitting…");
  try {
    const answer = await api("/api/security_evaluations", { method: "POST", json: request() });
    window.location.href = `/evaluations/${encodeURIComponent(answer.job_id)}`;
  } catch (err) {
    const slot = showError(form, err, general, { "preprocessing.mean": "preprocessing", "preprocessing.std": "preprocessing" });
    slot?.scrollIntoView({ block: "center" });
    button.disabled = false;
  }
});

document.getElementById("attack").addEventListener("change", showParams);
document.getElementById("preprocessing").addEventListener("change", (event) => {
  document.getElementById("custom-preprocessing").hidden = event.target.value !== "custom";
});
document.getElementById("model-file").addEventListener("change", (event) => upload("model", event.target));
document.getElementById("dataset-file").addEventListener("change", (event) => upload("dataset", event.target));

Promise.all([loadAttacks(), fillFiles("model", "trained-model"), fillFiles("dataset", "dataset")])
  .catch((err) => say(general, `Could not load the form's choices: ${err.message}`, "error"));
