#!/usr/bin/env bash
# Soak: mixed traffic against one `easel serve` on loopback for a bounded time, checking that it
# keeps serving, answers only the intended statuses, loses or doubles no usage row, and that its
# memory stays flat (issue 9, "Soak"; figures in docs/reliability.md).
#
#   scripts/soak/run.sh [SECONDS]            # default EASEL_SOAK_SECONDS, else 600
#
# Environment:
#   EASEL_SOAK_SECONDS        the duration when no argument is given (default 600)
#   EASEL_BIN                 the easel binary; default target/release/easel when it is newer than
#                             every source file, else target/debug/easel (built if needed)
#   EASEL_SOAK_OUT            a folder to keep the results in (default: a temporary one, removed)
#   EASEL_SOAK_MAX_REQUESTS   per wrk thread, a bound besides time (default 5,000,000)
#   EASEL_SOAK_RSS_GROWTH_PCT the allowed RSS growth after warm-up (default 10)
#
# What runs: Easel with a tiny random-weights local model (`easel models create-random`) as
# `turbo`, and `relay` (gpt-image-1) on the fake OpenAI provider of easel_upstream::testing in a
# process of its own (crates/easel-upstream/examples/fake_provider.rs). Five wrk processes at
# once, one per kind of traffic (scripts/soak/mix.lua), each with the statuses it may get:
#   local     turbo, b64 and url, 1 connection             200, 503 (overloaded: queue full)
#   upstream  relay, b64 and url, n of 1 and 2, 4 conns    200
#   hostile   bad JSON, a bad key, a huge n, a corrupt data-URL image, a truncated multipart
#             image, a text/plain body, an unknown model, an impossible size; 2 conns
#                                                         400, 401, 404, 415
#   limited   relay with a key limited to 10 requests a minute, 1 conn    200, 429
#   reads     /v1/models, /healthz, /readyz, a hosted image (its signed URL), 1 conn   200
# Any other status, any socket error, a panic in the log, a database that fails its integrity
# check, usage rows that do not match the 200s, or (in runs of 2 minutes or more) RSS growing
# more than the bound after the warm-up (the first fifth) fails the run; shorter runs, such as
# the 20-second smoke run of scripts/test.sh, report RSS without judging it, since memory is still
# settling. Every process runs on 127.0.0.1 and is stopped on exit.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
seconds="${1:-${EASEL_SOAK_SECONDS:-600}}"
max_requests="${EASEL_SOAK_MAX_REQUESTS:-5000000}"
growth_pct="${EASEL_SOAK_RSS_GROWTH_PCT:-10}"
target="${CARGO_TARGET_DIR:-$root/target}"
if ! command -v wrk >/dev/null; then
    echo "installing wrk (apt-get install wrk)"
    sudo=""; [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk >/dev/null \
        || { echo "could not install wrk (apt-get install wrk)" >&2; exit 1; }
fi

if [[ -n "${EASEL_SOAK_OUT:-}" ]]; then
    work="$EASEL_SOAK_OUT"; mkdir -p "$work"; keep=1
else
    work="$(mktemp -d)"; keep=0
fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $keep == 0 ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT

# The binaries.
if [[ -n "${EASEL_BIN:-}" ]]; then
    easel="$EASEL_BIN"
elif [[ -x "$target/release/easel" ]] && [[ -z "$(find "$root/crates" "$root/Cargo.toml" "$root/Cargo.lock" \
        \( -name '*.rs' -o -name '*.toml' -o -name '*.sql' -o -name Cargo.lock \) -newer "$target/release/easel" \
        -print -quit)" ]]; then
    easel="$target/release/easel"
else
    (cd "$root" && cargo build --quiet -p easel-server --bin easel)
    easel="$target/debug/easel"
fi
(cd "$root" && cargo build --quiet -p easel-upstream --example fake_provider)
fake_bin="$target/debug/examples/fake_provider"
echo "soak: ${seconds}s with $easel ($(nproc) cores), results in $work"

# The fake provider, the tiny model, fixtures, config and keys.
"$fake_bin" soak-provider-key > "$work/fake.out" 2> "$work/fake.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening' "$work/fake.out" 2>/dev/null && break; sleep 0.1; done
fake_url="$(sed -n 's/^listening //p' "$work/fake.out")"
[[ -n "$fake_url" ]] || { echo "the fake provider did not start" >&2; exit 1; }
[[ -d "$work/turbo" ]] || "$easel" models create-random --family sd-turbo --scale tiny --seed 7 --out "$work/turbo" >/dev/null
mkdir -p "$work/fixtures"
python3 - "$work/fixtures" <<'PY'
import base64, struct, sys, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\x00" + bytes([40, 90, 160]) * 64 for _ in range(64))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
corrupt = png[:33] + bytes((i * 37) % 251 for i in range(400))
open(sys.argv[1] + "/corrupt.b64", "w").write(base64.b64encode(corrupt).decode())
open(sys.argv[1] + "/truncated.png", "wb").write(png[: len(png) // 2])
PY
cat > "$work/easel.toml" <<TOML
[server]
bind = "127.0.0.1:0"
log_format = "json"
[storage]
data_dir = "$work/data"
[[providers]]
id = "fake"
kind = "openai"
base_url = "$fake_url/v1"
api_key_env = "SOAK_PROVIDER_KEY"
[[models]]
id = "relay"
backend = "upstream"
targets = [{ provider = "fake", model = "gpt-image-1" }]
sizes = ["64x64"]
native_sizes = ["64x64"]
[[models]]
id = "turbo"
backend = "local"
family = "sd-turbo"
path = "$work/turbo"
min_edge = 32
default_size = "64x64"
steps = 2
TOML
rm -rf "$work/data"
key="$("$easel" keys create --name soak --config "$work/easel.toml" | tail -n 1)"
limited_key="$("$easel" keys create --name soak-limited --rpm 10 --config "$work/easel.toml" | tail -n 1)"

# Easel.
SOAK_PROVIDER_KEY=soak-provider-key RUST_LOG=warn,easel_server=info "$easel" serve --config "$work/easel.toml" \
    2> "$work/easel.log" &
easel_pid=$!
pids+=($easel_pid)
address=""
for _ in $(seq 600); do
    address="$(grep -o '"address":"[^"]*"' "$work/easel.log" 2>/dev/null | head -n 1 | cut -d'"' -f4)" || true
    [[ -n "$address" ]] && curl -fsS -o /dev/null "http://$address/healthz" 2>/dev/null && break
    kill -0 "$easel_pid" 2>/dev/null || { echo "easel exited; see $work/easel.log" >&2; tail -n 20 "$work/easel.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$address" ]] || { echo "easel did not start" >&2; exit 1; }
url="http://$address"
# A hosted image for the reads to fetch by its signed URL.
hosted_path="$(curl -fsS "$url/v1/images/generations" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' -d '{"model":"relay","prompt":"p","response_format":"url"}' \
    | python3 -c 'import json, sys, urllib.parse as u; p = u.urlsplit(json.load(sys.stdin)["data"][0]["url"]); print(p.path + "?" + p.query)')"

# RSS of the easel process, sampled from /proc every few seconds.
interval=$(( seconds >= 120 ? 5 : 2 ))
(
    start=$(date +%s)
    while kill -0 "$easel_pid" 2>/dev/null; do
        rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$easel_pid/status" 2>/dev/null || true)"
        [[ -n "$rss" ]] && echo "$(( $(date +%s) - start )) $rss" >> "$work/rss.txt"
        sleep "$interval"
    done
) &
pids+=($!)

# The traffic: one wrk per kind, all at once, each bounded by time and by requests.
run_kind() {
    local kind="$1" connections="$2"
    SOAK_KIND="$kind" SOAK_KEY="$key" SOAK_LIMITED_KEY="$limited_key" SOAK_FIXTURES="$work/fixtures" \
    SOAK_HOSTED_PATH="$hosted_path" \
    SOAK_REPORT="$work/wrk-$kind.json" SOAK_MAX_REQUESTS="$max_requests" \
        timeout $(( seconds + 120 )) wrk -t1 -c"$connections" -d"${seconds}s" --timeout 60s \
        -s "$here/mix.lua" "$url" > "$work/wrk-$kind.txt" 2>&1
}
wrk_pids=()
for spec in local:1 upstream:4 hostile:2 limited:1 reads:1; do
    run_kind "${spec%%:*}" "${spec##*:}" &
    wrk_pids+=($!)
done
failed=0
for pid in "${wrk_pids[@]}"; do wait "$pid" || failed=1; done
[[ $failed == 0 ]] || { echo "a wrk run failed; see $work/wrk-*.txt" >&2; exit 1; }

# Still serving, then a clean stop (SIGTERM drains, the ledger is committed).
alive="$(curl -s -o /dev/null -w '%{http_code}' "$url/healthz")"
kill -TERM "$easel_pid"
exit_code=0
wait "$easel_pid" || exit_code=$?

python3 - "$work" "$seconds" "$growth_pct" "$alive" "$exit_code" "$easel" <<'PY'
import json, sqlite3, statistics, sys
work, seconds, growth_pct, alive, exit_code, binary = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6]
allowed = {"local": {200, 503}, "upstream": {200}, "hostile": {400, 401, 404, 415}, "limited": {200, 429}, "reads": {200}}
connections = {"local": 1, "upstream": 4, "hostile": 2, "limited": 1, "reads": 1}
problems = []
reports = {}
print(f"\n{'kind':<9} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  statuses")
for kind in allowed:
    r = json.load(open(f"{work}/wrk-{kind}.json"))
    reports[kind] = r
    statuses = {int(s): n for s, n in r["status"].items()}
    print(f"{kind:<9} {r['requests']:>9} {r['requests'] / r['seconds']:>7.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
          f"{r['max_ms']:>8.1f}  " + " ".join(f"{s}:{n}" for s, n in sorted(statuses.items())))
    unexpected = {s: n for s, n in statuses.items() if s not in allowed[kind]}
    if unexpected:
        problems.append(f"{kind}: unintended statuses {unexpected}")
    if sum(r["socket_errors"].values()):
        problems.append(f"{kind}: socket errors {r['socket_errors']}")
    if not statuses.get(200 if kind != "hostile" else 400):
        problems.append(f"{kind}: no successful request at all")

# Usage rows: one per 200 to a generation, none doubled. wrk stops with requests still in flight,
# which the server finishes and records: at most one per connection.
db = sqlite3.connect(f"{work}/data/easel.db")
integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
if integrity != "ok":
    problems.append(f"integrity_check: {integrity}")
ok_rows = db.execute("SELECT COUNT(*) FROM usage WHERE outcome = 'ok'").fetchone()[0]
answered = sum(reports[k]["status"].get("200", 0) for k in ("local", "upstream", "limited"))
slack = sum(connections[k] for k in ("local", "upstream", "limited"))
# The one hosted image made before the traffic is a row of its own.
ok_rows -= 1
print(f"\nusage rows 'ok': {ok_rows}; 200s counted by wrk: {answered} (in flight at the end: at most {slack})")
if not 0 <= ok_rows - answered <= slack:
    problems.append(f"usage rows {ok_rows} do not match the {answered} answered generations")
miscounted = db.execute("SELECT COUNT(*) FROM usage u WHERE image_count <> "
                        "(SELECT COUNT(*) FROM images i WHERE i.usage_id = u.id)").fetchone()[0]
if miscounted:
    problems.append(f"{miscounted} usage rows disagree with their image rows")

# RSS after the warm-up.
samples = [tuple(map(int, line.split())) for line in open(f"{work}/rss.txt")]
warmup = max(5, seconds // 5)
after = [rss for t, rss in samples if t >= warmup]
judged = seconds >= 120
if len(after) < 2:
    problems.append(f"too few RSS samples after the warm-up ({len(after)})")
else:
    base, last = statistics.median(after[:3]), statistics.median(after[-3:])
    growth = 100.0 * (last - base) / base
    print(f"RSS (MiB): at start {samples[0][1] / 1024:.1f}, after warm-up ({warmup}s) {base / 1024:.1f}, "
          f"at the end {last / 1024:.1f}, peak {max(after) / 1024:.1f}; growth {growth:+.1f}% "
          f"({len(samples)} samples)" + ("" if judged else "; not judged in a run under 2 minutes"))
    if judged and growth > growth_pct:
        problems.append(f"RSS grew {growth:.1f}% after the warm-up (bound {growth_pct}%)")
if alive != "200":
    problems.append(f"/healthz answered {alive} at the end")
if exit_code != 0:
    problems.append(f"easel exited {exit_code} after SIGTERM")
log = open(f"{work}/easel.log", errors="replace").read()
if "panicked" in log:
    problems.append("a panic in the log")
print(f"binary: {binary}")
if problems:
    print("\nSOAK FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print("soak passed")
PY
