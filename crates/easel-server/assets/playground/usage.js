// The admin usage page: `GET /admin/v1/usage?by=day|model&since=&model=` drawn as SVG bar
// charts (one bar per day or model, the chosen metric), with the numbers in a table as well.

import { getJson } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
const LABELS = { images: "images", total_tokens: "tokens", requests: "requests" };

/** Whether the current key may read usage (an admin key, or an open server). */
export async function isAdmin() {
  try {
    await getJson("/admin/v1/usage?by=model");
    return true;
  } catch {
    return false;
  }
}

/** Loads both groupings and draws them; throws the ApiError of a refused query. */
export async function load({ since, model, metric }, { dayChart, modelChart, table }) {
  const query = (by) => {
    const q = new URLSearchParams({ by });
    if (since) q.set("since", since);
    if (model && by === "day") q.set("model", model);
    return `/admin/v1/usage?${q}`;
  };
  const [days, models] = await Promise.all([getJson(query("day")), getJson(query("model"))]);
  const label = LABELS[metric] || metric;
  draw(dayChart, fillDays(days.data, since), metric, `${label} per day${model ? ` (${model})` : ""}`);
  draw(modelChart, models.data, metric, `${label} per model`);
  const body = table.tBodies[0];
  body.replaceChildren(
    ...models.data.map((row) => {
      const tr = document.createElement("tr");
      for (const key of ["group", "requests", "failed", "images", "input_tokens", "output_tokens", "total_tokens"]) {
        const td = document.createElement(key === "group" ? "th" : "td");
        if (key === "group") td.scope = "row";
        td.textContent = key === "group" ? row[key] : Number(row[key] || 0).toLocaleString();
        tr.append(td);
      }
      return tr;
    }),
  );
  return models.data.map((row) => row.group);
}

/** Days without requests shown as zero bars, from `since` (or the first day) to today. */
function fillDays(rows, since) {
  const byDay = new Map(rows.map((r) => [r.group, r]));
  const first = since || rows[0]?.group;
  if (!first) return rows;
  const out = [];
  const end = new Date().toISOString().slice(0, 10);
  for (let d = new Date(`${first}T00:00:00Z`); out.length < 400; d.setUTCDate(d.getUTCDate() + 1)) {
    const day = d.toISOString().slice(0, 10);
    out.push(byDay.get(day) || { group: day });
    if (day >= end) break;
  }
  return out;
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A bar chart of `rows[].metric` labelled by `rows[].group`. */
function draw(box, rows, metric, title) {
  const width = 640;
  const height = 220;
  const pad = { left: 48, right: 8, top: 12, bottom: 40 };
  const max = Math.max(1, ...rows.map((r) => Number(r[metric] || 0)));
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, preserveAspectRatio: "xMinYMid meet" });
  svg.append(el("title", {}, title));
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  for (const f of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - f);
    svg.append(el("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y }));
    svg.append(el("text", { x: pad.left - 6, y: y + 4, "text-anchor": "end" }, (max * f).toLocaleString(undefined, { maximumFractionDigits: 1 })));
  }
  const slot = Math.min(plotW / Math.max(rows.length, 1), 80);
  const every = Math.ceil(rows.length / 7);
  rows.forEach((row, i) => {
    const value = Number(row[metric] || 0);
    const h = (value / max) * plotH;
    const x = pad.left + i * slot + slot * 0.15;
    const bar = el("rect", { class: "bar", x, y: pad.top + plotH - h, width: Math.max(slot * 0.7, 1), height: h });
    bar.append(el("title", {}, `${row.group}: ${value.toLocaleString()}`));
    svg.append(bar);
    if (i % every === 0) {
      const day = /^\d{4}-\d\d-\d\d$/.test(row.group);
      const label = day ? row.group.slice(5) : row.group.length > 12 ? `${row.group.slice(0, 11)}…` : row.group;
      svg.append(el("text", { x: x + slot * 0.35, y: height - pad.bottom + 16, "text-anchor": "middle" }, label));
    }
  });
  if (!rows.length) svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "no requests"));
  box.replaceChildren(svg);
}
