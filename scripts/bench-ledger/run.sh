#!/usr/bin/env bash
# Ledger benchmark (issue 8, "Speed"): the release `easel serve` relaying a small generation
# (a 32x32 PNG) from an instant upstream (nginx serving a canned gpt-image answer on loopback, as
# bench/relay does), every request writing its usage and image rows, with SQLite and with
# PostgreSQL. Load: wrk, keep-alive, CONCURRENCY connections for DURATION seconds, RUNS times per
# engine. Prints requests/s, p50, p99 (wrk's latency distribution), Easel's CPU per request
# (utime + stime from /proc/PID/stat over the measured run) and PostgreSQL's, and the average
# group the ledger writer committed (its /metrics counters).
#
#   scripts/bench-ledger/run.sh [DURATION] [RUNS] [CONCURRENCY]        (defaults: 20 3 16)
#
# Needs wrk and nginx (Debian: wrk, nginx-light) and PostgreSQL's server binaries (Debian:
# postgresql); the cluster is a throwaway one on loopback, with PostgreSQL's normal durability
# (fsync, synchronous_commit and full_page_writes on), unlike the test cluster of
# scripts/services.sh. EASEL_BINS="label=path ..." compares several builds (for instance the
# commit before a change, built elsewhere); by default the workspace's release build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
duration="${1:-20}"
runs="${2:-3}"
concurrency="${3:-16}"
target="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d)"
chmod 755 "$work"   # nginx workers and PostgreSQL may run as other users
# shellcheck source=../services.sh
source "$root/scripts/services.sh"   # easel_free_port, easel_as_pg_user

easel_pid=""
pg_ctl=""
cleanup() {
    if [[ -n "$easel_pid" ]]; then kill "$easel_pid" 2>/dev/null || true; fi
    if [[ -f "$work/nginx.pid" ]]; then kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; fi
    if [[ -n "$pg_ctl" ]]; then easel_as_pg_user "$pg_ctl" -D "$work/pg/data" -m fast stop >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

for tool in wrk nginx; do
    command -v "$tool" >/dev/null || [[ -x "/usr/sbin/$tool" ]] || { echo "$tool is missing (apt-get install wrk nginx-light)" >&2; exit 1; }
done
bins="${EASEL_BINS:-}"
if [[ -z "$bins" ]]; then
    (cd "$root" && cargo build --release --bin easel)
    bins="current=$target/release/easel"
fi

# The canned upstream.
nginx_port="$(easel_free_port)"
mkdir -p "$work/tmp"
python3 "$root/bench/relay/bench.py" fixtures "$work/fixtures"
sed -e "s#@DIR@#$work#g" -e "s#@PORT@#$nginx_port#g" "$root/bench/relay/nginx.conf.in" > "$work/nginx.conf"
"$(command -v nginx || echo /usr/sbin/nginx)" -c "$work/nginx.conf" -p "$work" &
for _ in $(seq 50); do
    curl -fsS -X POST -o /dev/null "http://127.0.0.1:$nginx_port/small/v1/images/generations" 2>/dev/null && break
    sleep 0.1
done

# PostgreSQL with its default durability.
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
[[ -x "$pg_bin/initdb" ]] || { echo "PostgreSQL is missing (apt-get install postgresql)" >&2; exit 1; }
if [[ "$(id -u)" -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi
pg_port="$(easel_free_port)"
mkdir -p "$work/pg"
[[ "$(id -u)" -ne 0 ]] || chown postgres: "$work/pg"
easel_as_pg_user "$pg_bin/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --no-locale >"$work/pg/initdb.log" 2>&1 \
    || { cat "$work/pg/initdb.log" >&2; exit 1; }
pg_ctl="$pg_bin/pg_ctl"
easel_as_pg_user "$pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $work/pg" >/dev/null \
    || { cat "$work/pg/server.log" >&2; exit 1; }
pg_admin="postgres://postgres@127.0.0.1:$pg_port/postgres"
echo "PostgreSQL $(psql "$pg_admin" -Atc 'SHOW server_version') on 127.0.0.1:$pg_port:" \
    "fsync=$(psql "$pg_admin" -Atc 'SHOW fsync') synchronous_commit=$(psql "$pg_admin" -Atc 'SHOW synchronous_commit')"

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model": "relay", "prompt": "A cute baby sea otter wearing a beret", "size": "32x32"}'
wrk.headers["Content-Type"] = "application/json"
LUA

# utime + stime in clock ticks of the given processes (those that still exist).
ticks_of() {
    local total=0 pid fields
    for pid in "$@"; do
        fields="$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null)" || continue
        total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
    done
    echo "$total"
}
# This cluster's processes only (the postmaster and its children), not any other cluster's.
pg_pids() {
    local postmaster
    postmaster="$(head -n 1 "$work/pg/data/postmaster.pid" 2>/dev/null)" || return 0
    echo "$postmaster"; pgrep -P "$postmaster" || true
}
metric() { curl -fsS "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}' | head -n 1; }

echo "nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-10s %-9s %4s %9s %8s %8s %7s %12s %12s %7s %9s\n' \
    build engine run 'req/s' 'p50 ms' 'p99 ms' p99/p50 'easel ms/req' 'pg ms/req' group ledgered
hz="$(getconf CLK_TCK)"
run_no=0
for run in $(seq "$runs"); do
    for spec in $bins; do
        label="${spec%%=*}"
        bin="${spec#*=}"
        for engine in sqlite postgres; do
            run_no=$((run_no + 1))
            port="$(easel_free_port)"
            data="$work/data-$run_no"
            database=""
            if [[ $engine == postgres ]]; then
                psql "$pg_admin" -qc "CREATE DATABASE bench_$run_no" >/dev/null
                database="database = \"postgres://postgres@127.0.0.1:$pg_port/bench_$run_no\""
            fi
            cat > "$work/easel-$run_no.toml" <<TOML
[server]
bind = "127.0.0.1:$port"
[storage]
data_dir = "$data"
$database
[[providers]]
id = "canned"
kind = "openai"
base_url = "http://127.0.0.1:$nginx_port/small/v1"
api_key_env = "RELAY_BENCH_KEY"
[[models]]
id = "relay"
backend = "upstream"
targets = [{ provider = "canned", model = "gpt-image-1" }]
sizes = ["32x32"]
native_sizes = ["32x32"]
TOML
            RELAY_BENCH_KEY=canned RUST_LOG=warn "$bin" serve --config "$work/easel-$run_no.toml" 2>"$work/easel-$run_no.log" &
            easel_pid=$!
            for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break; sleep 0.1; done
            url="http://127.0.0.1:$port/v1/images/generations"
            wrk -t2 -c"$concurrency" -d3s -s "$work/post.lua" "$url" >/dev/null   # warm-up
            commits0="$(metric "$port" easel_ledger_commits_total)"; records0="$(metric "$port" easel_ledger_records_total)"
            # shellcheck disable=SC2046
            easel0="$(ticks_of "$easel_pid")"; pg0="$(ticks_of $(pg_pids))"
            wrk -t2 -c"$concurrency" -d"${duration}s" --latency -s "$work/post.lua" "$url" > "$work/wrk-$run_no.txt"
            # shellcheck disable=SC2046
            easel1="$(ticks_of "$easel_pid")"; pg1="$(ticks_of $(pg_pids))"
            commits1="$(metric "$port" easel_ledger_commits_total)"; records1="$(metric "$port" easel_ledger_records_total)"
            kill "$easel_pid"; wait "$easel_pid" 2>/dev/null || true
            easel_pid=""
            if grep -q 'Non-2xx\|Socket errors' "$work/wrk-$run_no.txt"; then
                echo "wrk saw errors:" >&2; cat "$work/wrk-$run_no.txt" "$work/easel-$run_no.log" >&2; exit 1
            fi
            # The ledger after shutdown: one usage row per request (warm-up included).
            if [[ $engine == postgres ]]; then
                ledgered="$(psql "postgres://postgres@127.0.0.1:$pg_port/bench_$run_no" -Atc 'SELECT COUNT(*) FROM usage')"
            else
                ledgered="$(python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT COUNT(*) FROM usage").fetchone()[0])' "$data/easel.db")"
            fi
            python3 - "$work/wrk-$run_no.txt" "$label" "$engine" "$run" "$hz" "$((easel1 - easel0))" "$((pg1 - pg0))" \
                "${commits0:-0}" "${commits1:-0}" "${records0:-0}" "${records1:-0}" "$ledgered" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
label, engine, run, hz, easel, pg, c0, c1, r0, r1, ledgered = sys.argv[2:]
def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
p50 = ms(*re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)$", text, re.M).groups())
p99 = ms(*re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)$", text, re.M).groups())
total = int(re.search(r"^\s*(\d+) requests in", text, re.M).group(1))
rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M).group(1))
per = lambda ticks: int(ticks) * 1000 / int(hz) / total
commits, records = float(c1) - float(c0), float(r1) - float(r0)
group = f"{records / commits:.1f}" if commits > 0 else "-"
print(f"{label:<10} {engine:<9} {run:>4} {rps:>9.0f} {p50:>8.2f} {p99:>8.2f} {p99 / p50:>7.1f} "
      f"{per(easel):>12.3f} {per(pg) if engine == 'postgres' else 0:>12.3f} {group:>7} {ledgered:>9}")
PY
        done
    done
done
