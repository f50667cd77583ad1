// Talking to Easel: the key kept in localStorage, requests with `Authorization: Bearer`, the
// OpenAI error envelope turned into an exception that knows its `param`, and Server-Sent Events
// read from a POST (EventSource can only GET, so the stream is parsed here).

const KEY = "easel.apiKey";

export const apiKey = {
  get: () => localStorage.getItem(KEY) || "",
  set: (value) => (value ? localStorage.setItem(KEY, value) : localStorage.removeItem(KEY)),
};

/** An error answered by the server: the envelope's fields, plus the HTTP status. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.param = error?.param ?? null;
    this.code = error?.code ?? null;
    this.type = error?.type ?? null;
  }
}

function headers(extra = {}) {
  const key = apiKey.get();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status alone
  }
  return new ApiError(response.status, body?.error);
}

/** GET a JSON resource. */
export async function getJson(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/**
 * POST `body` (an object sent as JSON, or FormData sent as multipart). Returns the JSON answer, or,
 * for a stream, calls `onEvent(type, data)` for each event and returns when it ends.
 */
export async function post(path, body, { signal, onEvent } = {}) {
  const json = !(body instanceof FormData);
  const response = await fetch(path, {
    method: "POST",
    headers: headers(json ? { "Content-Type": "application/json" } : {}),
    body: json ? JSON.stringify(body) : body,
    signal,
  });
  if (!response.ok) throw await failure(response);
  if (!(response.headers.get("content-type") || "").startsWith("text/event-stream")) return response.json();
  await readEvents(response.body, (type, data) => {
    if (type === "error") throw new ApiError(data?.error?.status || 500, data?.error);
    onEvent?.(type, data);
  });
  return null;
}

/** Calls `handle(type, data)` for each SSE event of `stream` (comments skipped). */
async function readEvents(stream, handle) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) handle(type, JSON.parse(data.join("\n")));
    }
  }
}
