// "Copy as curl" and "Copy as Python": the request exactly as the page made it, runnable from a
// shell or with the official `openai` SDK. The key is read from $EASEL_API_KEY rather than
// pasted in; input files are named as the gallery's downloads name them.
//
// A request is {endpoint, json, fields, files: [{field, name}]}: `fields` in the order sent,
// numbers as numbers when the body was JSON.

const SDK_ARGS = {
  generations: ["model", "prompt", "n", "size", "quality", "output_format", "stream", "partial_images", "response_format"],
  edits: ["model", "prompt", "n", "size", "quality", "output_format", "stream", "partial_images", "response_format"],
  variations: ["model", "n", "size", "response_format"],
};

/** A shell word, single-quoted when it needs to be. */
const sh = (text) => (/^[\w@%+=:,./-]+$/.test(text) ? text : `'${String(text).replace(/'/g, `'\\''`)}'`);

export function curl(request, origin) {
  const lines = [`curl -sS --fail-with-body ${request.fields.stream ? "-N " : ""}${sh(origin + request.endpoint)}`];
  lines.push(`-H "Authorization: Bearer $EASEL_API_KEY"`);
  if (request.json) {
    lines.push(`-H 'Content-Type: application/json'`);
    lines.push(`-d ${sh(JSON.stringify(request.fields, null, 2))}`);
  } else {
    for (const [name, value] of Object.entries(request.fields)) lines.push(`--form-string ${sh(`${name}=${value}`)}`);
    for (const file of request.files) lines.push(`-F ${sh(`${file.field}=@${file.name}`)}`);
  }
  return lines.join(" \\\n  ");
}

/** A Python literal for a JSON value. */
function py(value) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null || value === undefined) return "None";
  if (typeof value === "number") return String(value);
  return JSON.stringify(String(value));
}

export function python(request, origin) {
  const kind = request.endpoint.split("/").pop();
  const method = { generations: "generate", edits: "edit", variations: "create_variation" }[kind];
  const sdk = SDK_ARGS[kind];
  const args = [];
  const extra = [];
  const images = request.files.filter((f) => f.field.startsWith("image"));
  if (images.length === 1) args.push(`image=open(${py(images[0].name)}, "rb")`);
  else if (images.length) args.push(`image=[${images.map((f) => `open(${py(f.name)}, "rb")`).join(", ")}]`);
  const mask = request.files.find((f) => f.field === "mask");
  if (mask) args.push(`mask=open(${py(mask.name)}, "rb")`);
  for (const [name, raw] of Object.entries(request.fields)) {
    const value = request.json ? raw : typed(name, raw);
    if (sdk.includes(name)) args.push(`${name}=${py(value)}`);
    else extra.push(`${py(name)}: ${py(value)}`);
  }
  if (extra.length) args.push(`extra_body={${extra.join(", ")}}`);
  const ext = request.fields.output_format === "jpeg" ? "jpg" : request.fields.output_format || "png";
  const save = request.fields.stream
    ? [
        `for event in result:`,
        `    if event.type.endswith(".completed"):`,
        `        name = f"image-{event.created_at}.${ext}"`,
        `        with open(name, "wb") as f:`,
        `            f.write(base64.b64decode(event.b64_json))`,
        `        print(name)`,
      ]
    : [
        `for i, image in enumerate(result.data):`,
        `    with open(f"image-{i}.${ext}", "wb") as f:`,
        `        f.write(base64.b64decode(image.b64_json))`,
        `    print(f"image-{i}.${ext}")`,
      ];
  return [
    "import base64",
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${py(origin + "/v1")}, api_key=os.environ.get("EASEL_API_KEY", "none"))`,
    `result = client.images.${method}(`,
    ...args.map((a) => `    ${a},`),
    ")",
    ...save,
  ].join("\n");
}

/** Multipart fields are text; the SDK wants numbers and booleans typed. */
function typed(name, value) {
  if (value === "true" || value === "false") return value === "true";
  if (name !== "prompt" && name !== "negative_prompt" && value !== "" && !Number.isNaN(Number(value))) return Number(value);
  return value;
}
