-- One kind of soak traffic for wrk (scripts/soak/run.sh runs one wrk per kind, at once).
--
-- Environment: SOAK_KIND (local | upstream | hostile | limited | reads), SOAK_KEY (a valid API
-- key), SOAK_LIMITED_KEY (a key with a low requests-per-minute limit), SOAK_FIXTURES (the folder
-- with corrupt.png and truncated.png), SOAK_REPORT (where done() writes its JSON line),
-- SOAK_HOSTED_PATH (a hosted image's signed path and query), SOAK_MAX_REQUESTS (per wrk thread;
-- 0 = bounded by time only).
--
-- Each response's status is counted; run.sh decides which statuses each kind may get.

local kind = os.getenv("SOAK_KIND")
local key = os.getenv("SOAK_KEY")
local fixtures = os.getenv("SOAK_FIXTURES")
local max_requests = tonumber(os.getenv("SOAK_MAX_REQUESTS") or "0")

local function read(name)
  local f = assert(io.open(fixtures .. "/" .. name, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local function json(path, body, with_key)
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (with_key or key),
  }, body)
end

local function generation(model, format, n, user, with_key)
  return json("/v1/images/generations", string.format(
    '{"model":"%s","prompt":"a lighthouse on a cliff at dawn","size":"64x64","n":%d,"response_format":"%s","user":"%s"}',
    model, n, format, user), with_key)
end

local function multipart_edit(image)
  local boundary = "soak-boundary-7d3f"
  local body = "--" .. boundary .. "\r\n" ..
    'Content-Disposition: form-data; name="model"\r\n\r\nrelay\r\n' ..
    "--" .. boundary .. "\r\n" ..
    'Content-Disposition: form-data; name="prompt"\r\n\r\nadd a boat\r\n' ..
    "--" .. boundary .. "\r\n" ..
    'Content-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n' ..
    image .. "\r\n--" .. boundary .. "--\r\n"
  return wrk.format("POST", "/v1/images/edits", {
    ["Content-Type"] = "multipart/form-data; boundary=" .. boundary,
    ["Authorization"] = "Bearer " .. key,
  }, body)
end

local requests = {}

function init(args)
  if kind == "local" then
    requests = { generation("turbo", "b64_json", 1, "soak-local"), generation("turbo", "url", 1, "soak-local") }
  elseif kind == "upstream" then
    requests = {
      generation("relay", "b64_json", 1, "soak-upstream"),
      generation("relay", "url", 2, "soak-upstream"),
      generation("relay", "b64_json", 2, "soak-upstream"),
      generation("relay", "url", 1, "soak-upstream"),
    }
  elseif kind == "hostile" then
    local corrupt = read("corrupt.b64")
    requests = {
      -- 400 invalid_json
      json("/v1/images/generations", '{"model": "relay", "prompt": '),
      -- 401 invalid_api_key
      json("/v1/images/generations", '{"model":"relay","prompt":"p"}', "sk-easel-000000000000-notakey"),
      -- 400 integer_above_max_value
      json("/v1/images/generations", '{"model":"relay","prompt":"p","n":100000}'),
      -- 400 invalid_image_file: a PNG header over garbage, as a data URL in a JSON edit
      json("/v1/images/edits", '{"model":"relay","prompt":"p","images":[{"image_url":"data:image/png;base64,' ..
        corrupt .. '"}]}'),
      -- 400 invalid_image_file: a truncated PNG as a multipart file
      multipart_edit(read("truncated.png")),
      -- 415 unsupported_media_type
      wrk.format("POST", "/v1/images/generations", {
        ["Content-Type"] = "text/plain", ["Authorization"] = "Bearer " .. key }, "a lighthouse"),
      -- 404 model_not_found
      json("/v1/images/generations", '{"model":"no-such-model","prompt":"p"}'),
      -- 400 invalid_value (a size no model makes)
      json("/v1/images/generations", '{"model":"relay","prompt":"p","size":"7x99999"}'),
    }
  elseif kind == "limited" then
    requests = { generation("relay", "b64_json", 1, "soak-limited", os.getenv("SOAK_LIMITED_KEY")) }
  elseif kind == "reads" then
    requests = {
      wrk.format("GET", "/v1/models", { ["Authorization"] = "Bearer " .. key }),
      wrk.format("GET", "/healthz"),
      wrk.format("GET", "/readyz"),
      wrk.format("GET", os.getenv("SOAK_HOSTED_PATH")),
    }
  else
    error("SOAK_KIND must be local, upstream, hostile, limited or reads, not " .. tostring(kind))
  end
  sent = 0
  counts = {}
end

function request()
  sent = sent + 1
  return requests[(sent - 1) % #requests + 1]
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if max_requests > 0 and sent >= max_requests then
    wrk.thread:stop()
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      total[status] = (total[status] or 0) + n
    end
  end
  local statuses = {}
  for status, n in pairs(total) do
    table.insert(statuses, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  local line = string.format(
    '{"kind":"%s","requests":%d,"seconds":%.1f,"p50_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"status":{%s}}\n',
    kind, summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, e.connect, e.read, e.write, e.timeout, table.concat(statuses, ","))
  local f = assert(io.open(os.getenv("SOAK_REPORT"), "w"))
  f:write(line)
  f:close()
end
