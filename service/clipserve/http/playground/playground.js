// The clipserve playground: classify an image against labels, or rank images against a text.
// Every URL is relative to the page, so it works under a path prefix (an ingress at /clip/).
// The API key lives in the variable below only: no storage, no cookie.
"use strict";

let apiKey = "";
let retry = null; // the action a 401 interrupted, run again once a key is given
const $ = (id) => document.getElementById(id);

// /classify when the server has it (the template goes as `templates`), /rank otherwise (the
// page fills the template in): the same prompts either way.
const classifyRoute = fetch("schema/openapi.json")
  .then((r) => (r.ok ? r.json() : {}))
  .then((schema) => Boolean(schema.paths && schema.paths["/classify"]))
  .catch(() => false);

class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const started = performance.now();
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
  });
  const text = await response.text();
  const ms = performance.now() - started;
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.detail) || text || response.statusText);
  }
  return { data, ms, model: response.headers.get("X-Clip-Model") || "unknown" };
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function askForKey(action) {
  retry = action;
  $("key-form").hidden = false;
  $("api-key").focus();
  showError("This server needs an API key: enter it above.");
}

async function run(button, action) {
  showError("");
  button.disabled = true;
  try {
    await action();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) askForKey(() => run(button, action));
    else showError(err.message);
  } finally {
    button.disabled = false;
  }
}

async function loadModels() {
  const { data } = await call("GET", "models");
  const select = $("model");
  select.length = 1;
  for (const m of data.models) {
    const option = new Option(m.default ? `${m.spec} (default)` : m.spec, m.spec);
    select.add(option);
  }
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function prompt(template, label) {
  return template ? template.split("{}").join(label) : label;
}

function withModel(body) {
  const model = $("model").value;
  return model ? { ...body, model } : body;
}

// rows: [{name: string | Node[], probability}] -> a list with bars, most probable first
function showRanking(container, rows, answer, route) {
  rows.sort((a, b) => b.probability - a.probability);
  const list = document.createElement("ol");
  list.className = "ranking";
  for (const row of rows) {
    const pct = `${(row.probability * 100).toFixed(1)}%`;
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "name";
    name.append(...[row.name].flat());
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = pct;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "pct";
    value.textContent = pct;
    item.append(name, track, value);
    list.append(item);
  }
  container.replaceChildren(list);
  $("answered").textContent =
    `Answered by ${answer.model} in ${Math.round(answer.ms)} ms (POST ${route})`;
}

async function classify() {
  const file = $("classify-file").files[0];
  const url = $("classify-url").value.trim();
  if (!file && !url) throw new Error("Choose an image, drop one, or give its URL.");
  const labels = $("classify-labels").value.split("\n").map((l) => l.trim()).filter(Boolean);
  if (!labels.length) throw new Error("Type at least one label.");
  const template = $("classify-template").value.trim();
  if (template && !template.includes("{}")) {
    throw new Error("The prompt template needs {} where the label goes (or leave it empty).");
  }
  const image = file ? { img_blob: await readBase64(file) } : { img_uri: url };
  const result = $("classify-result");
  if (await classifyRoute) {
    const body = { images: [image], labels, templates: [template || "{}"] };
    const answer = await call("POST", "classify", withModel(body));
    const rows = answer.data.predictions[0].map((p) => ({
      name: p.label,
      probability: p.probability,
    }));
    showRanking(result, rows, answer, "/classify");
  } else {
    const candidates = labels.map((label) => ({ text: prompt(template, label) }));
    const answer = await call("POST", "rank", withModel({ queries: [image], candidates }));
    const rows = labels.map((label, i) => ({
      name: label,
      probability: answer.data.probabilities[0][i],
    }));
    showRanking(result, rows, answer, "/rank");
  }
}

async function search() {
  const files = [...$("search-files").files];
  const text = $("search-query").value.trim();
  if (!text) throw new Error("Type a text to search with.");
  if (!files.length) throw new Error("Choose or drop at least one image.");
  const candidates = await Promise.all(files.map(async (f) => ({ img_blob: await readBase64(f) })));
  const answer = await call("POST", "rank", withModel({ queries: [{ text }], candidates }));
  const rows = files.map((file, i) => {
    const thumb = new Image();
    thumb.src = URL.createObjectURL(file);
    thumb.alt = file.name;
    const name = document.createElement("span");
    name.textContent = file.name;
    return { name: [thumb, name], probability: answer.data.probabilities[0][i] };
  });
  showRanking($("search-result"), rows, answer, "/rank");
}

function preview() {
  const file = $("classify-file").files[0];
  const img = $("classify-preview");
  if (img.src) URL.revokeObjectURL(img.src);
  img.hidden = !file;
  if (file) img.src = URL.createObjectURL(file);
}

// A drop zone hands its files to its <input type=file>, so keyboard and drop share one path.
function dropZone(zone, input) {
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    input.files = e.dataTransfer.files;
    input.dispatchEvent(new Event("change"));
  });
}

// Tabs as the ARIA pattern: arrows, Home and End move between them.
function tabs() {
  const all = [...document.querySelectorAll('[role="tab"]')];
  const select = (tab) => {
    for (const t of all) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    tab.focus();
  };
  for (const tab of all) {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (e) => {
      const i = all.indexOf(tab);
      const next = {
        ArrowRight: all[(i + 1) % all.length],
        ArrowLeft: all[(i - 1 + all.length) % all.length],
        Home: all[0],
        End: all[all.length - 1],
      }[e.key];
      if (next) {
        e.preventDefault();
        select(next);
      }
    });
  }
}

function main() {
  tabs();
  dropZone($("classify-drop"), $("classify-file"));
  dropZone($("search-drop"), $("search-files"));
  $("classify-file").addEventListener("change", preview);
  for (const [form, action] of [
    ["classify-form", classify],
    ["search-form", search],
  ]) {
    $(form).addEventListener("submit", (e) => {
      e.preventDefault();
      run(e.submitter || $(form).querySelector("button"), action);
    });
  }
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = $("api-key").value.trim();
    $("key-form").hidden = true;
    showError("");
    const again = retry;
    retry = null;
    if (again) again();
  });
  classifyRoute.then((yes) => {
    $("api-mode").textContent = yes ? "labels via /classify" : "labels via /rank";
  });
  const models = () => loadModels().catch((err) => {
    if (err instanceof ApiError && err.status === 401) askForKey(models);
    else showError(`GET models: ${err.message}`);
  });
  models();
}

main();
