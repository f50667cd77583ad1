// Renders /openapi.json: one section per operation (method, path, summary, parameters, request
// bodies per content type, responses per status and content type), schemas shown as a tree with
// their $refs resolved on demand (<details>, so recursive schemas cost nothing until opened).

const doc = await (await fetch("/openapi.json")).json();
const schemas = doc.components?.schemas ?? {};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function refName(ref) {
  return ref.split("/").pop();
}

// A one-line summary of a schema's type.
function typeOf(s) {
  if (!s) return "any";
  if (s.$ref) return refName(s.$ref);
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.oneOf || s.anyOf) return (s.oneOf ?? s.anyOf).map(typeOf).join(" | ");
  if (s.allOf) return s.allOf.map(typeOf).join(" & ");
  const t = Array.isArray(s.type) ? s.type.join(" | ") : s.type ?? "object";
  if (t.startsWith("array")) return `array of ${typeOf(s.items)}`;
  return s.format ? `${t} (${s.format})` : t;
}

// The children of a schema: properties, alternatives, items, or the schema a $ref names.
function schemaTree(s, depth = 0) {
  if (!s || depth > 12) return el("span");
  if (s.$ref) {
    const target = schemas[refName(s.$ref)];
    const box = el("details", {}, el("summary", {}, refName(s.$ref)));
    box.addEventListener("toggle", () => {
      if (box.open && box.children.length === 1) box.append(schemaTree(target, depth + 1));
    });
    return box;
  }
  const list = el("ul", { class: "schema" });
  if (s.description) list.append(el("li", { class: "desc" }, s.description));
  const required = new Set(s.required ?? []);
  for (const [name, prop] of Object.entries(s.properties ?? {})) {
    const item = el("li", {}, el("code", {}, name), required.has(name) ? el("strong", {}, " required") : "",
      " ", el("span", { class: "type" }, typeOf(prop)));
    if (prop.description) item.append(el("div", { class: "desc" }, prop.description));
    if (prop.$ref || prop.properties || prop.items?.$ref || prop.oneOf) item.append(schemaTree(prop.items?.$ref ? prop.items : prop, depth + 1));
    list.append(item);
  }
  for (const alt of s.oneOf ?? s.anyOf ?? s.allOf ?? []) list.append(el("li", {}, schemaTree(alt, depth + 1)));
  if (s.items && !s.properties) list.append(el("li", {}, "items: ", schemaTree(s.items, depth + 1)));
  return list;
}

function contentBlock(content) {
  const box = el("div");
  for (const [type, media] of Object.entries(content ?? {})) {
    box.append(el("div", { class: "content" }, el("code", {}, type), " ", media.schema ? typeOf(media.schema) : ""));
    if (media.schema) box.append(schemaTree(media.schema));
  }
  return box;
}

function operationSection(method, path, op) {
  const id = `${method}-${path}`.replace(/[^a-z0-9]+/gi, "-");
  const section = el("section", { id, class: "operation", "data-search": `${method} ${path} ${op.tags ?? ""} ${op.summary ?? ""}`.toLowerCase() });
  section.append(el("h2", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), " ", el("code", {}, path)));
  if (op.summary) section.append(el("p", { class: "summary" }, op.summary));
  if (op.description) section.append(el("p", {}, op.description));
  if (op.security?.length) section.append(el("p", { class: "auth" }, "Needs an API key (Authorization: Bearer …)."));
  if (op.parameters?.length) {
    const rows = op.parameters.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
      el("td", {}, p.required ? "yes" : "no"), el("td", {}, p.description ?? "")));
    section.append(el("h3", {}, "Parameters"), el("table", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "in"),
      el("th", {}, "required"), el("th", {}, "description")), rows));
  }
  if (op.requestBody) section.append(el("h3", {}, "Request body"), contentBlock(op.requestBody.content));
  section.append(el("h3", {}, "Responses"));
  const errors = el("ul", { class: "errors" });
  for (const [status, response] of Object.entries(op.responses ?? {})) {
    const box = el("details", { class: "response" }, el("summary", {}, el("strong", {}, status), " ", response.description ?? ""));
    box.append(contentBlock(response.content));
    // The error answers share one body: listed together, folded, after the successes.
    (status.startsWith("2") ? section : errors).append(status.startsWith("2") ? box : el("li", {}, box));
  }
  if (errors.children.length) {
    section.append(el("details", { class: "response" }, el("summary", {}, `Errors (${errors.children.length})`), errors));
  }
  return section;
}

document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version}`;
document.getElementById("intro").textContent = doc.info.description ?? "";
const main = document.getElementById("operations");
const toc = document.getElementById("toc");
const tocList = el("ul");
toc.append(tocList);
// In the order of the document's tags (the images routes first), then by path.
const tagOrder = (doc.tags ?? []).map((t) => t.name);
const rank = (op) => { const i = tagOrder.indexOf(op.tags?.[0]); return i < 0 ? tagOrder.length : i; };
const operations = Object.entries(doc.paths).flatMap(([path, item]) =>
  Object.entries(item).map(([method, op]) => ({ path, method, op })));
operations.sort((a, b) => rank(a.op) - rank(b.op));
for (const { path, method, op } of operations) {
  const section = operationSection(method, path, op);
  main.append(section);
  tocList.append(el("li", {}, el("a", { href: `#${section.id}` }, `${method.toUpperCase()} ${path}`)));
}
document.getElementById("filter").addEventListener("input", (event) => {
  const words = event.target.value.toLowerCase().trim();
  for (const section of main.children) section.hidden = words !== "" && !section.dataset.search.includes(words);
});
