#!/usr/bin/env bash
# Relay benchmark (issue 12, gateway): Easel, LiteLLM's proxy, nginx alone and nginx's own reverse
# proxy (a relay's floor), back to back, on loopback, in front of an instant upstream (nginx
# serving canned gpt-image answers: a 32x32 PNG and a 1024x1024 PNG whose base64 is about 1 MiB).
# wrk at each concurrency measures requests/s, p50 and p99; CPU per request is utime + stime of
# each server's processes from /proc over the measured window, divided by the requests wrk
# counted. Results: bench/relay/RESULTS.md.
#
#   bench/relay/run.sh [DURATION_S] [ROUNDS]      full run (default 10 s per cell, 1 round)
#   bench/relay/run.sh --smoke                    Easel and the nginx rows, 2 s, concurrency 4, no LiteLLM
#
# Full run: installs nginx and wrk with apt-get when missing, LiteLLM's proxy from PyPI into
# bench/relay/.venv (kept), builds `easel` in release. RELAY_CONCURRENCY ("1 16 64"),
# RELAY_SIZES ("small big"), RELAY_PORT (18480, and the next three), EASEL_BIN (a built binary),
# RELAY_LITELLM=0 (Easel and nginx only), RELAY_JSON (a file for the raw numbers) and
# RELAY_EASEL_DATA (Easel's data folder, e.g. on /dev/shm to take the disk's writes out of its
# latency: bench/relay/RESULTS.md, 3 December 17:00) change it.
# Smoke (scripts/test.sh): installs nothing; without nginx or wrk it says so and exits 0; it
# fails (exit 1) if Easel does not start or answers anything but 200s with the image. It uses the
# debug binary unless EASEL_BIN names another.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
smoke=0
if [[ "${1:-}" == "--smoke" ]]; then smoke=1; shift; fi
duration="${1:-10}"
rounds="${2:-1}"
concurrency="${RELAY_CONCURRENCY:-1 16 64}"
sizes="${RELAY_SIZES:-small big}"
port="${RELAY_PORT:-18480}"
litellm_version="1.106.2"
litellm="${RELAY_LITELLM:-1}"
if [[ $smoke == 1 ]]; then duration=2; rounds=1; concurrency="${RELAY_CONCURRENCY:-4}"; litellm=0; fi

sudo=""
[[ $(id -u) -ne 0 ]] && sudo="sudo"
nginx_bin="$(command -v nginx || true)"
[[ -z "$nginx_bin" && -x /usr/sbin/nginx ]] && nginx_bin=/usr/sbin/nginx
if [[ -z "$nginx_bin" ]] || ! command -v wrk >/dev/null; then
    if [[ $smoke == 1 ]]; then
        echo "relay smoke skipped: needs nginx and wrk (apt-get install nginx-light wrk)"
        exit 0
    fi
    echo "installing nginx and wrk (apt-get install nginx-light wrk)"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx-light wrk >/dev/null \
        || { echo "could not install nginx and wrk" >&2; exit 1; }
    nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
fi
venv="$here/.venv"
if [[ $litellm == 1 ]] && ! "$venv/bin/python" -c "import litellm.proxy.proxy_server" 2>/dev/null; then
    echo "installing litellm[proxy]==$litellm_version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$litellm_version" \
        || { echo "could not install LiteLLM's proxy (is PyPI reachable?)" >&2; exit 1; }
fi

if [[ -n "${EASEL_BIN:-}" ]]; then
    easel="$EASEL_BIN"
elif [[ $smoke == 1 ]]; then
    (cd "$root" && cargo build --quiet -p easel-server --bin easel)
    easel="$target/debug/easel"
else
    (cd "$root" && cargo build --release --quiet -p easel-server --bin easel)
    easel="$target/release/easel"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
wait_for() { # URL PID NAME LOG
    for _ in $(seq 600); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { echo "$3 exited; its log:" >&2; tail -n 30 "$4" >&2; exit 1; }
        sleep 0.1
    done
    echo "$3 did not start" >&2; tail -n 30 "$4" >&2; exit 1
}

# The instant upstream (also the nginx-direct row).
mkdir -p "$work/tmp"
chmod 755 "$work"   # nginx workers may run as another user
python3 "$here/bench.py" fixtures "$work/fixtures"
sed -e "s#@DIR@#$work#g" -e "s#@PORT@#$port#g" "$here/nginx.conf.in" > "$work/nginx.conf"
"$nginx_bin" -c "$work/nginx.conf" -p "$work" 2> "$work/nginx.log" &
pids+=($!)
nginx_pid=$!
for _ in $(seq 50); do
    curl -fsS -X POST -o /dev/null "http://127.0.0.1:$port/small/v1/images/generations" 2>/dev/null && break
    sleep 0.1
done

# Easel: one provider and one model per answer size, no keys (open on loopback).
eport=$((port + 1))
{
    printf '[server]\nbind = "127.0.0.1:%s"\n[storage]\ndata_dir = "%s"\n' "$eport" "${RELAY_EASEL_DATA:-$work/easel-data}"
    for size in small big; do
        px=$([[ $size == small ]] && echo 32x32 || echo 1024x1024)
        cat <<TOML
[[providers]]
id = "canned-$size"
kind = "openai"
base_url = "http://127.0.0.1:$port/$size/v1"
api_key_env = "RELAY_BENCH_KEY"
[[models]]
id = "relay-$size"
backend = "upstream"
targets = [{ provider = "canned-$size", model = "gpt-image-1" }]
sizes = ["$px"]
native_sizes = ["$px"]
TOML
    done
} > "$work/easel.toml"
RELAY_BENCH_KEY=canned RUST_LOG=warn "$easel" serve --config "$work/easel.toml" > "$work/easel.log" 2>&1 &
easel_pid=$!
pids+=($easel_pid)
wait_for "http://127.0.0.1:$eport/healthz" "$easel_pid" easel "$work/easel.log"
servers=(--server easel "$easel_pid" "http://127.0.0.1:$eport")

# LiteLLM's proxy: the same two models, one worker, no database, logging off.
if [[ $litellm == 1 ]]; then
    lport=$((port + 2))
    {
        echo "model_list:"
        for size in small big; do
            printf '  - model_name: relay-%s\n    litellm_params:\n      model: openai/gpt-image-1\n' "$size"
            printf '      api_base: http://127.0.0.1:%s/%s/v1\n      api_key: canned\n' "$port" "$size"
        done
        printf 'litellm_settings:\n  set_verbose: false\n  drop_params: true\n'
    } > "$work/litellm.yaml"
    # No master key, as Easel runs with no keys: both accept every request on loopback.
    LITELLM_LOG=ERROR LITELLM_TELEMETRY=False DISABLE_SCHEMA_UPDATE=true LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY=true \
        "$venv/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$lport" --num_workers 1 \
        > "$work/litellm.log" 2>&1 &
    litellm_pid=$!
    pids+=($litellm_pid)
    wait_for "http://127.0.0.1:$lport/health/liveliness" "$litellm_pid" litellm "$work/litellm.log"
    servers+=(--server litellm "$litellm_pid" "http://127.0.0.1:$lport")
fi
servers+=(--server nginx "$nginx_pid" "http://127.0.0.1:$port/{size}")

# nginx's own reverse proxy in front of the same upstream: a relay's floor.
pport=$((port + 3))
sed -e "s#@DIR@#$work#g" -e "s#@PORT@#$pport#g" -e "s#@UPSTREAM@#$port#g" "$here/nginx-proxy.conf.in" > "$work/nginx-proxy.conf"
"$nginx_bin" -c "$work/nginx-proxy.conf" -p "$work" 2> "$work/nginx-proxy.log" &
proxy_pid=$!
pids+=($proxy_pid)
for _ in $(seq 50); do
    curl -fsS -X POST -o /dev/null "http://127.0.0.1:$pport/small/v1/images/generations" 2>/dev/null && break
    sleep 0.1
done
servers+=(--server nginx-proxy "$proxy_pid" "http://127.0.0.1:$pport/{size}")

echo "relay benchmark: $(nproc) cores ($(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -n 1)), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "easel: $easel; litellm: $([[ $litellm == 1 ]] && echo "$litellm_version" || echo "not run"); nginx: $("$nginx_bin" -v 2>&1 | sed 's/.*: //'); $(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)"
status=0
python3 "$here/bench.py" run --duration "$duration" --rounds "$rounds" --concurrency "$concurrency" \
    --sizes "$sizes" --json "${RELAY_JSON:-}" "${servers[@]}" || status=$?
if [[ $status != 0 ]]; then
    echo "the relay benchmark failed; Easel's log:" >&2
    tail -n 30 "$work/easel.log" >&2
fi
exit "$status"
