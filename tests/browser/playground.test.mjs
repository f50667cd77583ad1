// The playground in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// against a running Easel with a tiny local model. Started by the Rust test
// `browser::the_playground_in_a_browser`, which passes:
//   EASEL_URL          the server's origin (the page is at /)
//   EASEL_API_KEY      an admin key (the server has keys, so a wrong one is refused)
//   EASEL_MODEL        the model to pick
//   EASEL_SCREENSHOTS  the folder screenshots are written to
//   EASEL_PYTHON       optional: a Python with the `openai` SDK, to run "copy as Python" too
// The steps share one page and run in order: each builds on the last one's result.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const run = promisify(execFile);
const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (the Rust test browser.rs sets it)`);
  return value;
};
const URL_ = env("EASEL_URL");
const KEY = env("EASEL_API_KEY");
const MODEL = env("EASEL_MODEL");
const SHOTS = env("EASEL_SCREENSHOTS");
const CHROMIUM = process.env.EASEL_CHROMIUM || "/usr/bin/chromium";
// Generous: a debug build on two cores loads and runs the model slowly. Nothing asserts a time.
const SLOW = 180_000;

let browser;
let page;
const logs = [];

const shot = (name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-quic"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(SLOW);
  page.on("console", (m) => logs.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(URL_);
  await page.fill("#api-key", KEY);
  await page.dispatchEvent("#api-key", "change");
  await page.waitForSelector(`#model option[value="${MODEL}"]`, { state: "attached" });
  await page.selectOption("#model", MODEL);
});

after(async () => {
  if (logs.length) console.log(logs.join("\n"));
  await browser?.close();
});

test("the page describes the model and has no script errors", async () => {
  await page.waitForSelector("body[data-ready=true]");
  const info = await page.textContent("#model-info");
  assert.match(info, /generate/, info);
  assert.match(info, /steps \d+–\d+/, info);
  assert.deepEqual(logs.filter((l) => l.startsWith("pageerror")), []);
});

test("generate: partial images while it works, then the final image", async () => {
  await page.fill("#prompt", "a lighthouse at dusk");
  await page.fill("#size", "64x64");
  await page.fill("#seed", "11");
  await page.fill("#n", "1");
  await page.check("#stream");
  await page.fill("#partial_images", "2");
  // Every partial the page shows, and whether a final image was on screen at that moment.
  await page.evaluate(() => {
    window.partialsSeen = [];
    new MutationObserver(() =>
      window.partialsSeen.push(document.querySelectorAll("#results .card").length),
    ).observe(document.getElementById("partial-image"), { attributes: true, attributeFilter: ["src"] });
  });
  await page.click("#run");
  await page.waitForSelector("#results .card img.result-image");
  await page.waitForFunction(() => document.querySelector("#results .card img").naturalWidth > 0);
  const seen = await page.evaluate(() => window.partialsSeen);
  assert.ok(seen.length >= 1, `no partial image was shown: ${JSON.stringify(seen)}`);
  assert.ok(seen.every((cards) => cards === 0), "partials come before the final image");
  const size = await page.$eval("#results .card img", (img) => [img.naturalWidth, img.naturalHeight]);
  assert.deepEqual(size, [64, 64]);
  assert.equal(await page.isVisible("#error"), false);
  await shot("generate");
});

test("copy as curl runs with curl and succeeds", async (t) => {
  t.after(() => page.evaluate(() => document.getElementById("snippet-dialog").close()));
  await page.click('#results .card button:has-text("Copy as curl")');
  const command = await page.textContent("#snippet");
  assert.match(command, /^curl /);
  assert.ok(!command.includes(KEY), "the key is not pasted into the command");
  await shot("copy-as-curl");
  const dir = mkdtempSync(join(tmpdir(), "easel-curl-"));
  const { stdout } = await run("bash", ["-c", command], { cwd: dir, env: { ...process.env, EASEL_API_KEY: KEY }, maxBuffer: 64 << 20 });
  assert.match(stdout, /event: image_generation\.partial_image/);
  const completed = stdout.split("\n\n").find((block) => block.includes("event: image_generation.completed"));
  assert.ok(completed, stdout.slice(0, 500));
  const data = JSON.parse(completed.split("\n").find((l) => l.startsWith("data:")).slice(5));
  assert.equal(data.size, "64x64");
  // The same seed: curl gets the very image the page got.
  const pageImage = await page.$eval("#results .card img", async (img) => {
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let text = "";
    for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text);
  });
  assert.equal(data.b64_json, pageImage, "curl's request is the page's request");

  if (process.env.EASEL_PYTHON) {
    await page.click("#snippet-dialog button[value=close]");
    await page.click('#results .card button:has-text("Copy as Python")');
    const script = await page.textContent("#snippet");
    writeFileSync(join(dir, "request.py"), script);
    const py = await run(process.env.EASEL_PYTHON, ["request.py"], { cwd: dir, env: { ...process.env, EASEL_API_KEY: KEY } });
    assert.match(py.stdout, /image-.*\.png/, py.stdout + py.stderr);
  }
});

test("edit: paint a mask over the first image and edit; unpainted pixels are kept", async () => {
  await page.click('#results .card button:has-text("Use as input")');
  assert.equal(await page.getAttribute("#tab-edit", "aria-selected"), "true");
  await page.waitForSelector("#mask-stage:not([hidden])");
  await page.fill("#prompt", "make the left side red");
  await page.fill("#brush-size", "80");
  await page.dispatchEvent("#brush-size", "input");
  const box = await page.locator("#mask-canvas").boundingBox();
  // A stroke down the left edge (about the left fifth of the image).
  await page.mouse.move(box.x + box.width * 0.05, box.y + box.height * 0.05);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.05, box.y + box.height * 0.95, { steps: 12 });
  await page.mouse.up();
  // Undo and redo the same stroke: undo works, and what is sent is the second stroke.
  const paintAt = () => page.$eval("#mask-canvas", (c) => c.getContext("2d").getImageData(2, 32, 1, 1).data[3]);
  assert.ok((await paintAt()) > 0, "the stroke is painted");
  await page.click("#mask-undo");
  assert.equal(await paintAt(), 0, "undo removes it");
  await page.mouse.move(box.x + box.width * 0.05, box.y + box.height * 0.05);
  await page.mouse.down();
  await page.mouse.move(box.x + box.width * 0.05, box.y + box.height * 0.95, { steps: 12 });
  await page.mouse.up();
  await shot("mask");

  // What the page sends: each multipart part, and the mask's alpha at a painted and a kept pixel.
  await page.evaluate(() => {
    const send = window.fetch;
    window.fetch = (url, options) => {
      if (options?.body instanceof FormData) window.sentForm = options.body;
      return send(url, options);
    };
  });
  await page.click("#run");
  await page.waitForFunction(() => window.sentForm);
  const sent = await page.evaluate(async () => {
    const parts = [...window.sentForm.entries()].map(([k, v]) => (v instanceof Blob ? `${k}=@${v.name}` : k));
    const mask = window.sentForm.get("mask");
    const bitmap = await createImageBitmap(mask);
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const alpha = (x, y) => ctx.getImageData(x, y, 1, 1).data[3];
    return { parts, type: mask.type, size: [bitmap.width, bitmap.height], painted: alpha(2, 32), kept: alpha(60, 32) };
  });
  assert.ok(sent.parts.includes("mask=@mask.png"), JSON.stringify(sent));
  assert.ok(sent.parts.some((p) => p.startsWith("image=@easel-")), JSON.stringify(sent));
  assert.equal(sent.type, "image/png");
  assert.deepEqual(sent.size, [64, 64], "the mask is the image's size");
  assert.equal(sent.painted, 0, "painted: transparent (the area to edit)");
  assert.equal(sent.kept, 255, "not painted: opaque (kept)");
  await page.waitForFunction(() => document.querySelector("#results .card img")?.naturalWidth > 0 &&
    document.querySelector("#results .card")?.getAttribute("aria-label").startsWith("edits"));
  const [kept, changed] = await page.evaluate(async () => {
    const pixels = async (src) => {
      const img = new Image();
      img.src = src;
      await img.decode();
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(img, 0, 0);
      return (x, y) => [...ctx.getImageData(x, y, 1, 1).data];
    };
    const before = await pixels(document.querySelector("#image-list img").src);
    const after = await pixels(document.querySelector("#results .card img").src);
    const same = (x, y) => JSON.stringify(before(x, y)) === JSON.stringify(after(x, y));
    // Far right: never painted, so kept exactly. Left edge: painted, so remade.
    const kept = [[60, 4], [56, 32], [60, 60]].every(([x, y]) => same(x, y));
    const changed = [[1, 10], [2, 32], [1, 50]].some(([x, y]) => !same(x, y));
    return [kept, changed];
  });
  assert.ok(kept, "pixels outside the painted area are the input's");
  assert.ok(changed, "the painted area was edited");
  await shot("edit");
});

test("variations of any result", async () => {
  await page.click('#results .card button:has-text("Variations")');
  await page.waitForFunction(() => document.querySelector("#results .card")?.getAttribute("aria-label").startsWith("variations") &&
    document.querySelector("#results .card img").naturalWidth > 0);
  assert.equal(await page.isVisible("#error"), false);
});

test("errors: a wrong key is refused next to the key field, a bad size next to the size", async () => {
  await page.click("#tab-generate");
  await page.fill("#size", "65x65");
  await page.click("#run");
  await page.waitForSelector("#err-size:not(:empty)");
  const sizeError = await page.textContent("#err-size");
  assert.ok(sizeError.length > 10, sizeError);
  assert.equal(await page.getAttribute("#size", "aria-invalid"), "true");
  await shot("error-size");

  await page.fill("#api-key", "sk-wrong");
  await page.dispatchEvent("#api-key", "change");
  await page.waitForSelector("#err-api_key:not(:empty)");
  assert.match(await page.textContent("#err-api_key"), /Incorrect API key provided/);
  await page.fill("#size", "64x64");
  await page.click("#run");
  await page.waitForSelector("#err-api_key:not(:empty)");
  assert.match(await page.textContent("#err-api_key"), /Incorrect API key provided/);
  await page.waitForSelector("#tab-usage", { state: "hidden" }); // a refused key sees no usage page
  await shot("error-key");

  await page.fill("#api-key", KEY);
  await page.dispatchEvent("#api-key", "change");
  await page.waitForSelector(`#model option[value="${MODEL}"]`, { state: "attached" });
  assert.equal(await page.textContent("#err-api_key"), "");
});

test("gallery keeps this browser's results; the usage page charts them for an admin key", async () => {
  await page.click("#tab-gallery");
  await page.waitForSelector("#gallery .card");
  assert.equal(await page.locator("#gallery .card").count(), 3, "the generation, the edit and the variation");
  await shot("gallery");

  await page.waitForSelector("#tab-usage:not([hidden])");
  await page.click("#tab-usage");
  await page.waitForFunction(() =>
    [...document.querySelectorAll("#usage-day svg rect.bar")].some((bar) => Number(bar.getAttribute("height")) > 0));
  await page.waitForSelector("#usage-table tbody tr");
  const row = await page.textContent("#usage-table tbody tr");
  assert.ok(row.includes(MODEL), row);
  await shot("usage");
});

test("on a phone-sized screen the form comes first, in one column", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.click("#tab-generate");
  const [form, results] = await Promise.all([page.locator("#params").boundingBox(), page.locator(".results").boundingBox()]);
  assert.ok(results.y > form.y + form.height - 1, "results under the form");
  assert.ok(form.width <= 390, `the form fits: ${form.width}`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no sideways scrolling (${overflow}px)`);
  await shot("phone");
});

test("keyboard: tabs move with the arrow keys and focus is visible", async () => {
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.focus("#tab-generate");
  await page.keyboard.press("ArrowRight");
  assert.equal(await page.getAttribute("#tab-edit", "aria-selected"), "true");
  const outline = await page.$eval("#tab-edit", (el) => getComputedStyle(el).outlineStyle);
  assert.notEqual(outline, "none");
  // Every control has a label.
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea")]
      .filter((el) => !(el.labels?.length || el.getAttribute("aria-label")))
      .map((el) => el.id),
  );
  assert.deepEqual(unlabelled, []);
});
