#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing:
#   - a Python venv (.venv) with the official `openai` and `dashscope` SDKs and schemathesis
#     (tests/sdk/python/requirements.txt);
#   - the official `openai` Node SDK (tests/sdk/node, from its package-lock.json);
#   - Debian's chromium (apt) and playwright-core (tests/browser) for the playground's browser tests;
#   - cargo-nextest, if the machine lacks it;
#   - PostgreSQL (apt) and Garage (cargo install), started throwaway on loopback for the storage
#     tests by scripts/services.sh, and stopped on exit.
# Then runs every crate's tests with nextest (the SDK and storage tests are among them), then a
# short soak (scripts/soak/run.sh, with wrk from apt), then fuzzes every target in fuzz/ for a
# bounded time (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "Python SDK (.venv)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/sdk/python/requirements.txt; then
  echo "could not install the Python SDK (is PyPI reachable?)" >&2
  exit 1
fi
.venv/bin/python -c 'import openai; print("openai", openai.__version__)'

step "Node SDK (tests/sdk/node)"
command -v node >/dev/null || { echo "node is required for the Node SDK tests (apt-get install nodejs npm)" >&2; exit 1; }
if [ ! -d tests/sdk/node/node_modules/openai ] || [ tests/sdk/node/package-lock.json -nt tests/sdk/node/node_modules/.package-lock.json ]; then
  (cd tests/sdk/node && npm ci --no-audit --no-fund --loglevel=error)
fi
node -e 'console.log("openai (node)", require("./tests/sdk/node/node_modules/openai/package.json").version)'

step "Browser tests (Chromium, tests/browser)"
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium \
    || { echo "could not install chromium (apt-get install chromium)" >&2; exit 1; }
fi
if [ ! -d tests/browser/node_modules/playwright-core ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
/usr/bin/chromium --version 2>/dev/null | head -1

step "cargo-nextest"
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

step "Services (PostgreSQL, Garage)"
# shellcheck source=scripts/services.sh
source scripts/services.sh
easel_services_start || exit 1

step "Tests"
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"
# With no arguments, everything; otherwise the arguments select (e.g. `-p easel-core`).
[ $# -gt 0 ] || set -- --workspace
cargo nextest run --no-fail-fast "$@"

# The `cuda` and `cudnn` features, kept from rotting: `cargo check --features cudnn` when the CUDA toolkit
# wheels are already cached by scripts/build-cuda.sh (never downloaded here; EASEL_CUDA_CHECK=0 skips).
if [ "${EASEL_CUDA_CHECK:-1}" != 0 ] && [ -f "${EASEL_CUDA_CACHE:-$HOME/.cache/easel-cuda}/venv/.toolkit-installed" ]; then
  step "CUDA feature (cargo check, toolkit cached)" && scripts/build-cuda.sh --check
fi

# Then a short soak of the whole server with wrk (EASEL_SOAK_SECONDS, default 20, 0 skips):
# scripts/soak/run.sh; docs/reliability.md has the 10-minute run.
soak_seconds="${EASEL_SOAK_SECONDS:-20}"
step "Soak (${soak_seconds}s)"
if [ "$soak_seconds" -gt 0 ]; then scripts/soak/run.sh "$soak_seconds"; else echo "skipped (EASEL_SOAK_SECONDS=0)"; fi

# The diffusion benchmark once, tiny (bench/diffusion/smoke.sh: profile and TAESD decode at 64²).
step "Diffusion benchmark (smoke)" && bench/diffusion/smoke.sh

# The relay benchmark once, tiny (bench/relay/run.sh --smoke: Easel against nginx from apt, 2 s):
# fails if Easel errors. The full side-by-side run is bench/relay/RESULTS.md.
step "Relay benchmark (smoke)"
if { ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; } || ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx-light wrk >/dev/null \
    || { echo "could not install nginx and wrk (apt-get install nginx-light wrk)" >&2; exit 1; }
fi
bench/relay/run.sh --smoke

# Then every fuzz target for a bounded time (EASEL_FUZZ_SECONDS each, default 20, 0 skips): scripts/fuzz.sh.
step "Fuzzing" && scripts/fuzz.sh
