#!/usr/bin/env bash
# Relay benchmark: Easel's CPU per relayed POST /v1/images/generations against nginx serving a
# canned gpt-image answer on loopback (issue 4, "Speed"). Needs nginx (Debian: nginx-light).
#
#   scripts/bench-relay/run.sh [REQUESTS] [CONCURRENCY]
#
# Builds crates/easel-upstream's `relay_bench` example in release mode, writes the fixtures
# (a small body and a ~1 MiB base64 body), starts nginx on 127.0.0.1:$PORT, and prints CPU
# milliseconds per request for each body. LiteLLM's proxy: ~14 ms (small) and ~21 ms (1 MiB);
# Easel's target: at most 0.7 ms and 1 ms. First the relay path alone (the `relay_bench` example),
# then the same through the whole `easel serve` process.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
requests="${1:-4000}"
concurrency="${2:-4}"
port="${PORT:-18080}"
work="$(mktemp -d)"
target="${CARGO_TARGET_DIR:-$root/target}"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

easel_pid=""
cleanup() {
    if [[ -n "$easel_pid" ]]; then kill "$easel_pid" 2>/dev/null || true; fi
    if [[ -f "$work/nginx.pid" ]]; then kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

(cd "$root" && cargo build --release -p easel-upstream --example relay_bench && cargo build --release -p easel-server)
bench="$target/release/examples/relay_bench"
mkdir -p "$work/tmp"
chmod 755 "$work"   # nginx workers may run as another user
"$bench" fixtures "$work/fixtures"
sed -e "s#@DIR@#$work#g" -e "s#@PORT@#$port#g" "$here/nginx.conf.in" > "$work/nginx.conf"
"$nginx_bin" -c "$work/nginx.conf" -p "$work" &
for _ in $(seq 50); do
    curl -fsS -X POST -o /dev/null "http://127.0.0.1:$port/small/v1/images/generations" 2>/dev/null && break
    sleep 0.1
done
for body in small big; do
    "$bench" run "http://127.0.0.1:$port/$body/v1" "$body" "$requests" "$concurrency"
    "$bench" run "http://127.0.0.1:$port/$body/v1" "$body" "$requests" "$concurrency" no-response
done

# The same relay through the whole server (axum, auth, the ledger in SQLite, JSON out).
eport=$((port + 1))
for body in small big; do
    size=$([[ $body == small ]] && echo 32x32 || echo 1024x1024)
    cat > "$work/easel-$body.toml" <<TOML
[server]
bind = "127.0.0.1:$eport"
[storage]
data_dir = "$work/data-$body"
[[providers]]
id = "canned"
kind = "openai"
base_url = "http://127.0.0.1:$port/$body/v1"
api_key_env = "RELAY_BENCH_KEY"
[[models]]
id = "relay"
backend = "upstream"
targets = [{ provider = "canned", model = "gpt-image-1" }]
# The canned answers are 32x32 and 1024x1024: declare them, so the core asks for them as they are.
sizes = ["32x32", "1024x1024"]
native_sizes = ["32x32", "1024x1024"]
TOML
    RELAY_BENCH_KEY=canned RUST_LOG=warn "$target/release/easel" serve --config "$work/easel-$body.toml" &
    easel_pid=$!
    for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$eport/healthz" 2>/dev/null && break; sleep 0.1; done
    python3 "$here/client.py" "http://127.0.0.1:$eport" "$easel_pid" "$size" "$requests" "$concurrency"
    kill "$easel_pid"; wait "$easel_pid" 2>/dev/null || true
    easel_pid=""
done