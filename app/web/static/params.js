// Form fields built from a catalogue's parameter table (GET /api/attacks lists attacks, defenses and
// defense-params with the same rows: name, type, default, minimum, maximum, choices, description),
// shared by the attack's parameters and the defenses' rows. Text nodes only.

import { el } from "./common.js";

/** A parameter table as {name: spec}, from a list of rows or an object (values or specs). */
export function specOf(params) {
  let table = params || {};
  if (Array.isArray(table)) table = Object.fromEntries(table.map((p) => [p.name, p]));
  return Object.fromEntries(Object.entries(table).map(([k, p]) =>
    [k, p !== null && typeof p === "object" && !Array.isArray(p) ? p : { default: p }]));
}

/** One parameter's field: a checkbox (boolean default), a select (choices) or a text input holding the
 *  default; ``id`` is the element's id, ``field`` the request path the API names in its errors. */
export function paramField(name, spec, { id = `param-${name}`, field = `attack-params.${name}` } = {}) {
  const hint = [spec.description, spec.range && `range ${JSON.stringify(spec.range)}`,
    spec.minimum !== undefined && spec.minimum !== null && `${spec["exclusive-minimum"] ? "above" : "min"} ${spec.minimum}`,
    spec.maximum !== undefined && spec.maximum !== null && `max ${spec.maximum}`,
    spec.odd === true && "odd",
    Array.isArray(spec.choices) && `one of ${spec.choices.join(", ")}`].filter(Boolean).join("; ");
  let input;
  if (typeof spec.default === "boolean") {
    input = el("input", { id, name: field, type: "checkbox", checked: spec.default, dataset: { param: name, kind: "bool" } });
  } else if (Array.isArray(spec.choices)) {
    input = el("select", { id, name: field, dataset: { param: name } },
      spec.choices.map((c) => el("option", { value: c, selected: c === spec.default }, c)));
  } else {
    input = el("input", { id, name: field, type: "text", value: spec.default ?? "", dataset: { param: name }, spellcheck: "false" });
  }
  return el("div", { class: "field" }, el("label", { for: id }, name), input,
    hint ? el("span", { class: "hint" }, hint) : null,
    el("span", { class: "field-error", "data-error-for": field }));
}

/** The values of the parameter inputs under ``box`` ({name: value}); empty text is left out (the API's
 *  default applies), ``read`` turns typed text into the value sent. */
export function paramValues(box, read) {
  const values = {};
  for (const input of box.querySelectorAll("[data-param]")) {
    if (input.dataset.kind === "bool") values[input.dataset.param] = input.checked;
    else if (input.value.trim() !== "") values[input.dataset.param] = read(input.value);
  }
  return values;
}

/** A paper as text, linked when the catalogue gives an https URL. */
export function paperOf(paper) {
  if (!paper) return "";
  if (typeof paper !== "object") return `(${paper})`;
  const cite = [paper.authors, paper.venue].filter(Boolean).join(", ");
  const title = /^https:\/\//.test(paper.url || "")
    ? el("a", { href: paper.url, target: "_blank", rel: "noopener noreferrer" }, paper.title || paper.url) : paper.title || "";
  return el("span", {}, "(", title, cite ? `, ${cite}` : "", ")");
}
