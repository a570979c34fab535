// Preprocessing defenses as the pages show them: the form's "Defenses" rows (a select of the defenses
// GET /api/attacks lists, each with its parameters, in the request's order) and the defense-params
// options, and the labels of a defended evaluation ("bit-depth (bits 4) then spatial-smoothing (window 3)").
// Text nodes only.

import { el } from "./common.js";
import { paperOf, paramField, paramValues, specOf } from "./params.js";

const PATH = /^defenses\[\d+\]/;
const NOT_PARAMS = new Set(["name", "random", "crossing"]);

/** One stage as a user reads it: "spatial-smoothing (window 3)"; its parameters are every key but
 *  name, random and crossing (the output's echo of a stage carries those two as well). */
export function stageLabel(stage) {
  const params = Object.entries(stage || {}).filter(([k]) => !NOT_PARAMS.has(k)).map(([k, v]) => `${k} ${v}`);
  return params.length ? `${stage.name} (${params.join(", ")})` : String(stage?.name ?? "");
}

/** Stages in order: "bit-depth (bits 4) then spatial-smoothing (window 3)". */
export function defensesLabel(stages) {
  return (Array.isArray(stages) ? stages : []).map(stageLabel).join(" then ");
}

/** The listing's defenses ({max-defenses, defenses: [...], defense-params: [...]}), or null when the
 *  service lists none (then the form has no Defenses fieldset). */
function listingOf(answer) {
  const listing = answer && !Array.isArray(answer) ? answer.defenses : null;
  const usable = listing && Array.isArray(listing.defenses) && listing.defenses.length;
  return usable ? { ...listing, defenses: listing.defenses.filter((d) => d && typeof d.name === "string") } : null;
}

/** Set up the form's Defenses fieldset from GET /api/attacks' answer; returns what the request adds:
 *  {defenses, defense-params} when rows are chosen, else {} (the API refuses defense-params alone).
 *  ``read`` turns a typed value into the one sent (numbers when they read as numbers). */
export function defenseForm(answer, read) {
  const fieldset = document.getElementById("defenses-fieldset");
  const listing = listingOf(answer);
  fieldset.hidden = !listing;
  if (!listing) return () => ({});
  const rows = document.getElementById("defense-rows");
  const add = document.getElementById("defense-add");
  const options = document.getElementById("defense-options");
  const most = Number.isInteger(listing["max-defenses"]) ? listing["max-defenses"] : listing.defenses.length;
  const byName = Object.fromEntries(listing.defenses.map((d) => [d.name, d]));
  let uid = 0;

  document.getElementById("defense-params").replaceChildren(...Object.entries(specOf(listing["defense-params"])).map(([n, s]) =>
    paramField(n, s, { id: `defense-param-${n}`, field: `defense-params.${n}` })));

  const chosen = () => [...rows.querySelectorAll(".defense-row")];

  // Errors name a stage by its position (defenses[1].window): after a row moves or goes, every
  // name and error slot follows its row's new position.
  function refresh() {
    chosen().forEach((row, i) => {
      row.querySelector(".defense-label").textContent = `Defense ${i + 1}`;
      for (const node of row.querySelectorAll("[name], [data-error-for]")) {
        for (const attr of ["name", "data-error-for"]) {
          const path = node.getAttribute(attr);
          if (path && PATH.test(path)) node.setAttribute(attr, path.replace(PATH, `defenses[${i}]`));
        }
      }
      row.querySelector(".defense-up").hidden = i === 0;
    });
    const count = chosen().length;
    add.disabled = count >= most;
    document.getElementById("defense-count").textContent = count >= most ? `at most ${most} defenses` : `up to ${most}, applied in this order`;
    options.hidden = count === 0;
    const random = chosen().map((row) => byName[row.querySelector(".defense-name").value]).filter((d) => d?.random).map((d) => d.name);
    const randomKinds = listing.defenses.filter((d) => d.random).map((d) => d.name);
    document.getElementById("defense-random-note").textContent = random.length
      ? `eot-draws and prediction-draws apply to the random defense chosen (${[...new Set(random)].join(", ")}).`
      : `eot-draws and prediction-draws matter only for a random defense${randomKinds.length ? ` (${randomKinds.join(", ")})` : ""}; `
        + "none of those chosen is random, so they are not used.";
  }

  function showStage(row, index) {
    const defense = byName[row.querySelector(".defense-name").value];
    const n = row.dataset.uid;
    row.querySelector(".defense-params").replaceChildren(...Object.entries(specOf(defense?.parameters)).map(([p, s]) =>
      paramField(p, s, { id: `defense-${n}-${p}`, field: `defenses[${index}].${p}` })));
    const random = defense?.random
      ? "Random: the attack averages eot-draws draws per step (EOT), a prediction is the majority over prediction-draws draws."
      : "Deterministic.";
    row.querySelector(".defense-info").replaceChildren(...(defense ? [defense.description || "", " ", el("strong", {}, random),
      defense["crossing-description"] ? ` Attacked: ${defense["crossing-description"]} ` : " ", paperOf(defense.paper)] : []));
  }

  function addRow() {
    const index = chosen().length;
    const n = String(++uid);
    const used = new Set(chosen().map((row) => row.querySelector(".defense-name").value));
    const first = (listing.defenses.find((d) => !used.has(d.name)) || listing.defenses[0]).name;
    const select = el("select", { id: `defense-${n}`, class: "defense-name", name: `defenses[${index}].name` },
      listing.defenses.map((d) => el("option", { value: d.name, selected: d.name === first },
        `${d.name}${d.title ? `: ${d.title}` : ""}${d.random ? " (random)" : ""}`)));
    const row = el("div", { class: "defense-row", dataset: { uid: n } },
      el("div", { class: "field" }, el("label", { for: select.id, class: "defense-label" }), select,
        el("span", { class: "hint defense-info" }), el("span", { class: "field-error", "data-error-for": `defenses[${index}].name` })),
      el("div", { class: "params defense-params" }),
      el("span", { class: "field-error", "data-error-for": `defenses[${index}]` }),
      el("div", { class: "toolbar" }, el("button", { type: "button", class: "defense-up" }, "Move up"),
        el("button", { type: "button", class: "defense-remove" }, "Remove")));
    rows.append(row);
    showStage(row, index);
    refresh();
    select.focus();
  }

  add.addEventListener("click", addRow);
  rows.addEventListener("change", (event) => {
    if (!event.target.classList.contains("defense-name")) return;
    const row = event.target.closest(".defense-row");
    showStage(row, chosen().indexOf(row));
    refresh();
  });
  rows.addEventListener("click", (event) => {
    const row = event.target.closest(".defense-row");
    if (!row || event.target.tagName !== "BUTTON") return;
    if (event.target.classList.contains("defense-remove")) row.remove();
    else if (event.target.classList.contains("defense-up") && row.previousElementSibling) row.previousElementSibling.before(row);
    refresh();
  });
  refresh();

  return () => {
    const stages = chosen().map((row) => ({ name: row.querySelector(".defense-name").value,
      ...paramValues(row.querySelector(".defense-params"), read) }));
    return stages.length ? { defenses: stages, "defense-params": paramValues(options, read) } : {};
  };
}
