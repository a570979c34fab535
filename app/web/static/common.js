// Shared by every page: the API key (kept in this tab's sessionStorage, sent only as the X-API-Key
// header, never in a URL), calls to the JSON API, its errors shown next to the field they name,
// downloads that need the key, and a DOM builder that writes text, never HTML.

const KEY = "secev-api-key";

/** An answer of the API that was not 2xx: its status and its JSON body {error, details}. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? String(body.error) : `HTTP ${status}`);
    this.status = status;
    this.details = body ? body.details : undefined;
  }

  /** The request field the error names (details.field), if any. */
  get field() {
    return this.details && typeof this.details === "object" && typeof this.details.field === "string"
      ? this.details.field : null;
  }

  /** The message with what the details carry besides the field, for a user to act on. */
  describe() {
    const d = this.details;
    if (d === undefined || d === null) return this.message;
    if (typeof d !== "object") return `${this.message} (${d})`;
    const rest = Object.entries(d).filter(([k]) => k !== "field");
    if (!rest.length) return this.message;
    return `${this.message} (${rest.map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join("; ")})`;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

/** Build an element: el("a", {href: "/x", class: "c"}, "text", child). Strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Call the API: JSON in (``json``) or multipart (``form``), JSON out; ``raw`` returns the Response. */
export async function api(path, { method = "GET", json, form, raw = false } = {}) {
  const headers = new Headers();
  const key = apiKey();
  if (key) headers.set("X-API-Key", key);
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "follow" };
  if (json !== undefined) {
    headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, { error: "the service cannot be reached", details: String(exc) });
  }
  if (!response.ok) {
    let body;
    try {
      body = await response.json();
    } catch {
      body = { error: `HTTP ${response.status} ${response.statusText}` };
    }
    if (response.status === 401) askForKey(body.error);
    throw new ApiError(response.status, body);
  }
  return raw ? response : response.json();
}

/** True when an error means the endpoint itself does not exist on this server (an older service). */
export function missingEndpoint(err) {
  return err instanceof ApiError && (err.status === 405 || (err.status === 404 && err.message === "Not Found"));
}

/** Fetch ``path`` with the key and save it as ``filename`` (a plain link cannot carry the header). */
export async function download(path, filename) {
  const response = await api(path, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** Show a message in a status element (``kind``: "error", "ok" or "" for plain). */
export function say(node, text, kind = "") {
  node.textContent = text || "";
  node.classList.toggle("error", kind === "error");
  node.classList.toggle("ok", kind === "ok");
}

/** Clear the field errors of ``form`` (and its general message). */
export function clearErrors(form, general) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const bad of form.querySelectorAll("[aria-invalid]")) bad.removeAttribute("aria-invalid");
  if (general) say(general, "");
}

/** Put an API error next to the field it names (``details.field``; "attack-params.steps" falls back to
 *  "attack-params"), or in ``general`` when no field on the form matches. Returns the slot used. */
export function showError(form, err, general, fieldMap = {}) {
  const message = err instanceof ApiError ? err.describe() : String(err && err.message ? err.message : err);
  let field = err instanceof ApiError ? err.field : null;
  field = field && (fieldMap[field] || field);
  let slot = null;
  for (let name = field; name && !slot; name = name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : null) {
    slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
  }
  if (slot) {
    slot.textContent = message;
    const input = form.querySelector(`[name="${CSS.escape(field)}"]`) || slot.parentElement.querySelector("input, select");
    if (input) input.setAttribute("aria-invalid", "true");
    if (general) say(general, "The service refused the request: see the field marked below.", "error");
  } else if (general) {
    say(general, message, "error");
  }
  return slot;
}

/** Status badge text and class. */
export function badge(status) {
  return el("span", { class: `badge status-${status}` }, status);
}

export function fmtTime(seconds) {
  if (!seconds) return "";
  const d = new Date(seconds * 1000);
  return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

export function pct(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)}%` : "–";
}

/** "done / total (p%)" and the fraction, for a progress bar. */
export function progressOf(view) {
  const p = view.progress || { done: 0, total: 0 };
  const fraction = view["job-status"] === "finished" ? 1 : p.total ? p.done / p.total : 0;
  const text = p.total ? `${p.done} / ${p.total} (${Math.floor(fraction * 100)}%)` : view["job-status"] === "finished" ? "done" : "waiting";
  return { fraction, text };
}

/** Names of the caller's models and datasets by id (one request each, not one per row). */
export async function fileNames() {
  const names = {};
  for (const kind of ["models", "datasets"]) {
    try {
      const page = await api(`/api/${kind}?limit=1000`);
      for (const item of page[kind]) names[item.id] = item.name;
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
    }
  }
  return names;
}

/** A request's model or dataset as a user knows it: the upload's name, else the named file. */
export function fileLabel(names, ref) {
  return names[ref] || ref || "";
}

function askForKey(message) {
  const banner = document.getElementById("key-message");
  banner.textContent = `${message || "an API key is required"}: enter your API key above.`;
  banner.hidden = false;
  document.getElementById("api-key").focus();
}

function keyBar() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  const state = document.getElementById("key-state");
  const forget = document.getElementById("key-forget");
  const show = () => {
    const set = Boolean(apiKey());
    state.textContent = set ? "API key set for this tab" : "no API key";
    forget.hidden = !set;
    input.value = "";
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.value.trim()) return;
    sessionStorage.setItem(KEY, input.value.trim());
    window.location.reload();  // every page reloads its data with the key
  });
  forget.addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    window.location.reload();
  });
  show();
}

keyBar();
