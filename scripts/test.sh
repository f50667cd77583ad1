#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing:
#   - a Python venv (.venv) with the official `openai` SDK (tests/sdk/python/requirements.txt);
#   - the official `openai` Node SDK (tests/sdk/node, from its package-lock.json);
#   - cargo-nextest, if the machine lacks it;
#   - PostgreSQL (apt) and Garage (cargo install), started throwaway on loopback for the storage
#     tests by scripts/services.sh, and stopped on exit.
# Then runs every crate's tests with nextest (the SDK and storage tests are among them), then
# fuzzes every target in fuzz/ for a bounded time (scripts/fuzz.sh).
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

# Then every fuzz target for a bounded time (EASEL_FUZZ_SECONDS each, default 20, 0 skips): scripts/fuzz.sh.
step "Fuzzing" && scripts/fuzz.sh
