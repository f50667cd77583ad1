// The playground's wiring: the key, the model picker, the form, runs (streamed or not), result
// cards, the gallery, the tabs and the usage page. Requests are built here once, as a plain
// record, and the same record is sent, saved and turned into curl/Python.

import { ApiError, apiKey, getJson, post } from "./api.js";
import * as gallery from "./gallery.js";
import { MaskPainter } from "./mask.js";
import * as snippets from "./snippets.js";
import * as usage from "./usage.js";

const $ = (id) => document.getElementById(id);
const MODEL_KEY = "easel.model";
const MIME = { png: "image/png", jpeg: "image/jpeg", webp: "image/webp" };
/** The input each error `param` belongs to, where its id differs from the param. */
const INPUT_FOR = { api_key: "api-key", image: "images", since: "usage-since" };

const state = {
  mode: "generate",
  models: [],
  inputs: [], // [{blob, name, url}] for edits
  running: null, // AbortController of the run in flight
  urls: [], // object URLs of the cards on screen
};
const painter = new MaskPainter($("mask-canvas"));

// ---- errors -------------------------------------------------------------------------------

function clearErrors() {
  for (const slot of document.querySelectorAll(".field-error")) slot.textContent = "";
  for (const input of document.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  $("error").hidden = true;
}

/** The envelope's message next to the field its `param` names, else in the form's banner. */
function showError(error, banner = $("error")) {
  let param = error instanceof ApiError ? (error.param || "").replace(/\[.*$/, "") : "";
  if (!param && error instanceof ApiError && error.status === 401) param = "api_key";
  const slot = param && document.querySelector(`.field-error[data-param="${CSS.escape(param)}"]`);
  if (slot && !slot.closest("[hidden]")) {
    slot.textContent = error.message;
    const input = $(INPUT_FOR[param] || param);
    input?.setAttribute("aria-invalid", "true");
    input?.focus();
    return;
  }
  banner.textContent = error instanceof ApiError ? error.message : `Could not reach the server: ${error.message}`;
  banner.hidden = false;
}

// ---- the key and the models ----------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  try {
    const list = await getJson("/v1/models");
    state.models = list.data || [];
  } catch (error) {
    state.models = [];
    select.replaceChildren();
    showError(error);
    describeModel();
    return;
  }
  const wanted = select.value || localStorage.getItem(MODEL_KEY);
  select.replaceChildren(
    ...state.models.map((m) => {
      const option = new Option(m.random_weights ? `${m.id} (random weights)` : m.id, m.id);
      option.selected = m.id === wanted;
      return option;
    }),
  );
  describeModel();
}

const currentModel = () => state.models.find((m) => m.id === $("model").value);

function badge(text, warn = false) {
  const span = document.createElement("span");
  span.className = warn ? "badge warn" : "badge";
  span.textContent = text;
  return span;
}

/** What the chosen model supports, shown under the picker and applied to the inputs' limits. */
function describeModel() {
  const info = $("model-info");
  const model = currentModel();
  if (!model) {
    info.textContent = state.models.length ? "" : "No models available to this key.";
    return;
  }
  localStorage.setItem(MODEL_KEY, model.id);
  const caps = model.capabilities;
  const parts = [];
  if (model.random_weights) parts.push(badge("random weights: makes noise", true));
  if (!caps) {
    parts.push(document.createTextNode(`owned by ${model.owned_by || "?"}`));
    info.replaceChildren(...parts);
    return;
  }
  for (const op of caps.operations || []) parts.push(badge(op));
  const lines = [];
  const sizes = caps.sizes;
  if (Array.isArray(sizes)) lines.push(`sizes ${sizes.join(", ")}`);
  else if (sizes) lines.push(`sizes ${sizes.min_edge}–${sizes.max_edge} px, multiples of ${sizes.multiple_of}`);
  if (caps.default_size) lines.push(`default ${caps.default_size}`);
  const steps = caps.extensions?.steps;
  if (steps) lines.push(`steps ${steps.min}–${steps.max}`);
  if (caps.max_n) lines.push(`up to ${caps.max_n} images`);
  if (caps.max_input_images) lines.push(`${caps.max_input_images} input image${caps.max_input_images > 1 ? "s" : ""}`);
  if (caps.partial_images === false) lines.push("no partial images");
  parts.push(document.createTextNode(` ${lines.join(" · ")}`));
  info.replaceChildren(...parts);

  const list = $("size-list");
  const suggestions = Array.isArray(sizes) ? sizes : caps.default_size ? [caps.default_size] : [];
  list.replaceChildren(...suggestions.map((s) => new Option(s, s)));
  $("size").placeholder = caps.default_size ? `auto (${caps.default_size})` : "auto";
  if (caps.max_n) $("n").max = caps.max_n;
  limits($("steps"), steps);
  limits($("guidance_scale"), caps.extensions?.guidance_scale);
  limits($("strength"), caps.extensions?.strength);
  const quality = $("quality");
  const chosen = quality.value;
  quality.replaceChildren(new Option("auto", ""), ...(caps.qualities || []).filter((q) => q !== "auto").map((q) => new Option(q, q)));
  quality.value = [...quality.options].some((o) => o.value === chosen) ? chosen : "";
}

function limits(input, range) {
  if (range?.min !== undefined) input.min = range.min;
  else input.removeAttribute("min");
  if (range?.max !== undefined) input.max = range.max;
  else input.removeAttribute("max");
}

async function keyChanged() {
  apiKey.set($("api-key").value.trim());
  clearErrors();
  await loadModels();
  $("tab-usage").hidden = !(await usage.isAdmin());
  if ($("tab-usage").hidden && state.mode === "usage") select("generate");
}

// ---- building and running a request ----------------------------------------------------------

const value = (id) => $(id).value.trim();

/** The request the form describes for `kind` (generations, edits, variations). */
function buildRequest(kind, files = []) {
  const json = kind === "generations";
  const fields = {};
  const set = (name, v) => {
    if (v !== "" && v !== undefined && v !== null) fields[name] = json || typeof v === "string" ? v : String(v);
  };
  const number = (id) => (value(id) === "" ? "" : Number(value(id)));
  set("model", value("model"));
  if (kind !== "variations") set("prompt", $("prompt").value);
  set("negative_prompt", $("negative_prompt").value.trim());
  set("size", value("size"));
  if (kind !== "variations") set("quality", value("quality"));
  set("output_format", value("output_format"));
  set("n", number("n"));
  set("seed", number("seed"));
  set("steps", number("steps"));
  set("guidance_scale", number("guidance_scale"));
  if (kind !== "generations") set("strength", number("strength"));
  if (kind !== "variations" && $("stream").checked) {
    set("stream", true);
    set("partial_images", number("partial_images"));
  }
  return { endpoint: `/v1/images/${kind}`, json, fields, files };
}

function b64Blob(b64, mime) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: mime });
}

/** An image of a response (or a completed event) as {blob, mime} or, failing that, {url}. */
async function imageOf(item, format) {
  const mime = MIME[item.output_format || format] || "image/png";
  if (item.b64_json) return { blob: b64Blob(item.b64_json, mime), mime };
  if (item.url) {
    try {
      const blob = await (await fetch(item.url)).blob();
      return { blob, mime: blob.type || mime };
    } catch {
      return { url: item.url, mime };
    }
  }
  return null;
}

function setRunning(on) {
  $("run").disabled = on;
  $("stop").hidden = !on;
  $("progress-box").hidden = !on;
  if (!on) state.running = null;
}

/**
 * Sends `request` with its file blobs ({field, name, blob}), showing partial images and progress,
 * then saves and shows the result.
 */
async function run(request) {
  clearErrors();
  if (state.running) return;
  state.running = new AbortController();
  setRunning(true);
  const progress = $("progress");
  const n = Number(request.fields.n || 1);
  const partials = request.fields.stream ? Number(request.fields.partial_images || 0) : 0;
  const total = request.fields.stream ? n * (partials + 1) : 0;
  let seen = 0;
  let done = 0;
  if (total) {
    progress.max = total;
    progress.value = 0;
  } else progress.removeAttribute("value");
  $("progress-label").textContent = request.fields.stream ? "Waiting for the first image…" : "Working…";
  $("partial").hidden = true;
  const images = [];
  const format = request.fields.output_format || "png";
  let body = request.fields;
  if (!request.json) {
    body = new FormData();
    for (const [name, v] of Object.entries(request.fields)) body.append(name, v);
    for (const file of request.files) body.append(file.field, file.blob, file.name);
  }
  const started = Date.now();
  try {
    const answer = await post(request.endpoint, body, {
      signal: state.running.signal,
      onEvent: (type, data) => {
        if (type.endsWith(".partial_image")) {
          seen += 1;
          const partial = $("partial-image");
          partial.src = `data:${MIME[data.output_format] || "image/png"};base64,${data.b64_json}`;
          $("partial-caption").textContent = `Partial image ${data.partial_image_index + 1} of ${partials}`;
          $("partial").hidden = false;
        } else if (type.endsWith(".completed")) {
          done += 1;
          images.push(data);
        }
        progress.value = Math.min(seen + done, total);
        $("progress-label").textContent = `${done} of ${n} image${n > 1 ? "s" : ""} done, ${seen} partial${seen === 1 ? "" : "s"} seen`;
      },
    });
    if (answer) images.push(...(answer.data || []).map((item) => ({ ...item, output_format: answer.output_format })));
    const entry = {
      id: `${started.toString(36)}${Math.random().toString(36).slice(2, 6)}`,
      created: started,
      seconds: (Date.now() - started) / 1000,
      endpoint: request.endpoint,
      json: request.json,
      fields: request.fields,
      files: request.files.map(({ field, name }) => ({ field, name })),
      images: (await Promise.all(images.map((i) => imageOf(i, format)))).filter(Boolean),
      usage: answer?.usage || null,
    };
    await gallery.save(entry).catch(() => {});
    $("partial").hidden = true;
    showResults([entry], $("results"));
    $("results-empty").hidden = true;
  } catch (error) {
    if (error.name === "AbortError") {
      $("error").textContent = "Stopped.";
      $("error").hidden = false;
    } else showError(error);
  } finally {
    setRunning(false);
  }
}

/** The edit request: the chosen images, and the painted mask when there is one. */
async function runEdit() {
  if (!state.inputs.length) {
    showError(new ApiError(400, { message: "Choose at least one image to edit.", param: "image" }));
    return;
  }
  const field = state.inputs.length > 1 ? "image[]" : "image";
  const files = state.inputs.map((input) => ({ field, name: input.name, blob: input.blob }));
  const mask = await painter.toBlob();
  if (mask) files.push({ field: "mask", name: "mask.png", blob: mask });
  await run(buildRequest("edits", files));
}

// ---- results and the gallery ------------------------------------------------------------------

const fileName = (entry, i, mime) => `easel-${entry.id}-${i + 1}.${(mime || "image/png").split("/")[1].replace("jpeg", "jpg")}`;

function describeRequest(entry) {
  const f = entry.fields;
  const kind = entry.endpoint.split("/").pop();
  const bits = [f.size && `size ${f.size}`, f.seed !== undefined && `seed ${f.seed}`, f.steps !== undefined && `${f.steps} steps`,
    f.guidance_scale !== undefined && `guidance ${f.guidance_scale}`, f.quality && `quality ${f.quality}`,
    f.strength !== undefined && `strength ${f.strength}`, entry.files.some((x) => x.field === "mask") && "masked"].filter(Boolean);
  return { title: `${kind} · ${f.model || "default model"}`, prompt: f.prompt || "", bits: bits.join(" · ") };
}

function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

/** Cards for every image of `entries`, in `box`. */
function showResults(entries, box, { removable = false } = {}) {
  if (box === $("results")) {
    for (const url of state.urls) URL.revokeObjectURL(url);
    state.urls = [];
  }
  const cards = [];
  for (const entry of entries) {
    const about = describeRequest(entry);
    entry.images.forEach((image, i) => {
      const src = image.blob ? URL.createObjectURL(image.blob) : image.url;
      if (image.blob) state.urls.push(src);
      const name = fileName(entry, i, image.mime);
      const card = document.createElement("article");
      card.className = "card";
      card.setAttribute("aria-label", `${about.title}, image ${i + 1}`);
      const img = document.createElement("img");
      img.src = src;
      img.alt = about.prompt ? `Result for: ${about.prompt}` : `Result ${i + 1}`;
      img.className = "result-image";
      const meta = document.createElement("div");
      meta.className = "meta";
      const strong = document.createElement("strong");
      strong.textContent = about.title;
      meta.append(strong, document.createElement("br"), about.prompt, document.createElement("br"),
        `${about.bits}${about.bits ? " · " : ""}${new Date(entry.created).toLocaleString()}`);
      const buttons = document.createElement("div");
      buttons.className = "buttons";
      const download = document.createElement("a");
      download.href = src;
      download.download = name;
      download.textContent = "Download";
      download.setAttribute("aria-label", `Download image ${i + 1} as ${name}`);
      buttons.append(download);
      if (image.blob) {
        buttons.append(
          button("Use as input", `Use image ${i + 1} as an edit input`, () => useAsInput(image.blob, name)),
          button("Variations", `Variations of image ${i + 1}`, () => {
            if (state.mode !== "generate" && state.mode !== "edit") select("generate");
            run(buildRequest("variations", [{ field: "image", name, blob: image.blob }]));
          }),
        );
      }
      buttons.append(
        button("Copy as curl", "Copy this request as curl", () => showSnippet("curl", snippets.curl(entry, location.origin))),
        button("Copy as Python", "Copy this request as Python (openai SDK)", () =>
          showSnippet("Python (openai SDK)", snippets.python(entry, location.origin))),
      );
      if (removable) {
        buttons.append(button("Delete", "Delete this result from the gallery", async () => {
          await gallery.remove(entry.id);
          renderGallery();
        }));
      }
      card.append(img, meta, buttons);
      cards.push(card);
    });
  }
  box.replaceChildren(...cards);
}

async function renderGallery() {
  const entries = await gallery.all().catch(() => []);
  showResults(entries, $("gallery"), { removable: true });
  $("gallery-empty").hidden = entries.length > 0;
}

/** Shows a snippet and copies it (the clipboard needs a secure context; the dialog always works). */
async function showSnippet(kind, text) {
  $("snippet-title").textContent = kind;
  $("snippet").textContent = text;
  let note = "Set EASEL_API_KEY in your shell first.";
  try {
    await navigator.clipboard.writeText(text);
    note = `Copied. ${note}`;
  } catch {
    note = `Select and copy the text below. ${note}`;
  }
  $("snippet-note").textContent = note;
  $("snippet-dialog").showModal();
}

// ---- edit inputs and the mask -----------------------------------------------------------------

function useAsInput(blob, name) {
  state.inputs.push({ blob, name, url: URL.createObjectURL(blob) });
  select("edit");
  renderInputs();
}

function renderInputs() {
  const list = $("image-list");
  list.replaceChildren(
    ...state.inputs.map((input, i) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = input.url;
      img.alt = "";
      const remove = button("×", `Remove ${input.name}`, () => {
        URL.revokeObjectURL(state.inputs[i].url);
        state.inputs.splice(i, 1);
        renderInputs();
      });
      li.append(img, input.name, remove);
      return li;
    }),
  );
  const first = state.inputs[0];
  const stage = $("mask-stage");
  const image = $("mask-image");
  if (!first) {
    stage.hidden = true;
    painter.reset(0, 0);
    return;
  }
  if (image.dataset.src === first.url) return;
  image.dataset.src = first.url;
  image.onload = () => {
    painter.reset(image.naturalWidth, image.naturalHeight);
    stage.hidden = false;
  };
  image.src = first.url;
}

function setTool(tool) {
  painter.tool = tool;
  $("tool-brush").setAttribute("aria-pressed", String(tool === "brush"));
  $("tool-eraser").setAttribute("aria-pressed", String(tool === "eraser"));
}

function setBrush(size) {
  const slider = $("brush-size");
  slider.value = Math.max(Number(slider.min), Math.min(Number(slider.max), size));
  painter.size = Number(slider.value);
  $("brush-size-out").textContent = slider.value;
}

// ---- tabs ---------------------------------------------------------------------------------------

function select(mode) {
  state.mode = mode;
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const on = tab.dataset.mode === mode;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
  }
  const workspace = mode === "generate" || mode === "edit";
  $("workspace").hidden = !workspace;
  $("workspace").setAttribute("aria-labelledby", `tab-${workspace ? mode : "generate"}`);
  $("gallery-panel").hidden = mode !== "gallery";
  $("usage-panel").hidden = mode !== "usage";
  for (const el of document.querySelectorAll(".edit-only")) el.hidden = mode !== "edit";
  $("run").textContent = mode === "edit" ? "Edit" : "Generate";
  if (mode === "gallery") renderGallery();
  if (mode === "usage") loadUsage();
}

async function loadUsage() {
  $("usage-error").hidden = true;
  try {
    const groups = await usage.load(
      { since: $("usage-since").value, model: $("usage-model").value, metric: $("usage-metric").value },
      { dayChart: $("usage-day"), modelChart: $("usage-model-chart"), table: $("usage-table") },
    );
    const picker = $("usage-model");
    const chosen = picker.value;
    const known = new Set([...picker.options].map((o) => o.value));
    for (const g of groups) if (!known.has(g)) picker.append(new Option(g, g));
    picker.value = chosen;
  } catch (error) {
    showError(error, $("usage-error"));
  }
}

// ---- wiring -------------------------------------------------------------------------------------

function wire() {
  const key = $("api-key");
  key.value = apiKey.get();
  key.addEventListener("change", keyChanged);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    keyChanged();
  });
  $("key-show").addEventListener("click", (e) => {
    const show = key.type === "password";
    key.type = show ? "text" : "password";
    e.currentTarget.setAttribute("aria-pressed", String(show));
    e.currentTarget.textContent = show ? "Hide" : "Show";
  });
  $("model").addEventListener("change", describeModel);

  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab.dataset.mode));
    tab.addEventListener("keydown", (e) => {
      const visible = tabs.filter((t) => !t.hidden);
      let i = visible.indexOf(tab);
      if (e.key === "ArrowRight") i = (i + 1) % visible.length;
      else if (e.key === "ArrowLeft") i = (i - 1 + visible.length) % visible.length;
      else if (e.key === "Home") i = 0;
      else if (e.key === "End") i = visible.length - 1;
      else return;
      e.preventDefault();
      visible[i].focus();
      select(visible[i].dataset.mode);
    });
  }

  $("params").addEventListener("submit", (e) => {
    e.preventDefault();
    if (state.mode === "edit") runEdit();
    else run(buildRequest("generations"));
  });
  $("stop").addEventListener("click", () => state.running?.abort());

  $("images").addEventListener("change", (e) => {
    for (const input of state.inputs) URL.revokeObjectURL(input.url);
    state.inputs = [...e.target.files].map((file) => ({ blob: file, name: file.name, url: URL.createObjectURL(file) }));
    renderInputs();
  });
  $("tool-brush").addEventListener("click", () => setTool("brush"));
  $("tool-eraser").addEventListener("click", () => setTool("eraser"));
  $("brush-size").addEventListener("input", (e) => setBrush(Number(e.target.value)));
  $("mask-undo").addEventListener("click", () => painter.undo());
  $("mask-clear").addEventListener("click", () => painter.clear());
  $("mask-all").addEventListener("click", () => painter.fill());
  document.addEventListener("keydown", (e) => {
    if (state.mode !== "edit" || e.target.matches("input:not([type=range]), textarea, select")) return;
    if (e.key === "[") setBrush(painter.size - 4);
    else if (e.key === "]") setBrush(painter.size + 4);
    else if (e.key === "z" && (e.ctrlKey || e.metaKey)) painter.undo();
    else return;
    e.preventDefault();
  });

  $("gallery-clear").addEventListener("click", async () => {
    if (!confirm("Delete every result saved in this browser?")) return;
    await gallery.clear();
    renderGallery();
  });

  const since = new Date(Date.now() - 29 * 86_400_000).toISOString().slice(0, 10);
  $("usage-since").value = since;
  $("usage-form").addEventListener("submit", (e) => {
    e.preventDefault();
    loadUsage();
  });
  $("usage-metric").addEventListener("change", loadUsage);
  $("usage-model").addEventListener("change", loadUsage);

  $("snippet-copy").addEventListener("click", () => navigator.clipboard?.writeText($("snippet").textContent).catch(() => {}));
}

wire();
select("generate");
keyChanged().then(() => document.body.setAttribute("data-ready", "true"));
