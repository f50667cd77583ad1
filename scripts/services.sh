# shellcheck shell=bash
# Sourced by scripts/test.sh: starts the services the storage tests run against, each throwaway
# and on loopback only, and exports where they are:
#   - PostgreSQL (Debian's packages, installed when missing): a fresh cluster in a temp dir;
#     EASEL_TEST_POSTGRES_URL is its `postgres` database (each test creates its own database);
#   - Garage, an S3-compatible store (`cargo install garage` when missing): one node, one bucket,
#     one key; EASEL_TEST_S3_URL is the bucket, with AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
#     AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ALLOW_HTTP set for object_store;
#   - EASEL_TEST_REQUIRE_SERVICES=1, so a test whose service is missing fails instead of skipping.
# `easel_services_start` sets an EXIT trap that stops both and removes their files.
# Set EASEL_GARAGE_VERSION to install another Garage (the CLI calls below are Garage 2.x's).

EASEL_GARAGE_VERSION="${EASEL_GARAGE_VERSION:-2.5.0}"

# A free TCP port on 127.0.0.1 (asked of the kernel; another process could take it before use,
# which the start-up checks below would report).
easel_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs "$@" as the cluster's owner: initdb and postgres refuse to run as root.
easel_as_pg_user() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

easel_postgres_start() {
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "installing PostgreSQL (apt-get install postgresql)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null \
      || { echo "could not install PostgreSQL (apt-get install postgresql)" >&2; return 1; }
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  local dir="$EASEL_SERVICES_DIR/postgres" port
  port="$(easel_free_port)"
  mkdir -p "$dir"
  [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
  # trust auth is safe here: the cluster listens on 127.0.0.1 only and lives for one test run.
  easel_as_pg_user "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
  # Durability off: the data is thrown away, and fsyncs would dominate a 2-core CI machine.
  EASEL_PG_CTL="$bin/pg_ctl"
  EASEL_PG_DATA="$dir/data"
  easel_as_pg_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off \
     -c full_page_writes=off -c max_connections=300" >/dev/null \
    || { cat "$dir/server.log" >&2; return 1; }
  export EASEL_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

easel_garage_start() {
  if ! command -v garage >/dev/null; then
    echo "installing Garage $EASEL_GARAGE_VERSION (cargo install garage; about 12 minutes on 2 cores, once)"
    # A test store needs no peak speed: without LTO, at opt-level 1, in 16 codegen units, the
    # build takes about 12 minutes on 2 cores instead of about 20 (measured under load).
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
      CARGO_PROFILE_RELEASE_DEBUG=0 \
      cargo install garage --locked --version "$EASEL_GARAGE_VERSION" \
      || { echo "could not install Garage (cargo install garage)" >&2; return 1; }
  fi
  local dir="$EASEL_SERVICES_DIR/garage" s3_port rpc_port admin_port
  s3_port="$(easel_free_port)"
  rpc_port="$(easel_free_port)"
  admin_port="$(easel_free_port)"
  mkdir -p "$dir"
  cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
EOF
  local g=(garage -c "$dir/garage.toml")
  RUST_LOG=warn "${g[@]}" server >"$dir/server.log" 2>&1 &
  EASEL_GARAGE_PID=$!
  local tries=0
  until "${g[@]}" status >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -gt 120 ] || ! kill -0 "$EASEL_GARAGE_PID" 2>/dev/null; then
      echo "Garage did not start:" >&2
      cat "$dir/server.log" >&2
      return 1
    fi
    sleep 0.25
  done
  local node key
  node="$("${g[@]}" node id -q 2>/dev/null)"
  node="${node%%@*}"
  {
    "${g[@]}" layout assign -z dc1 -c 1G "$node" &&
      "${g[@]}" layout apply --version 1 &&
      "${g[@]}" bucket create easel-test &&
      key="$("${g[@]}" key create easel-test)" &&
      "${g[@]}" bucket allow --read --write --owner easel-test --key easel-test
  } >"$dir/setup.log" 2>&1 || { echo "setting up Garage failed:" >&2; cat "$dir/setup.log" >&2; return 1; }
  export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  AWS_ACCESS_KEY_ID="$(awk '/^Key ID:/ {print $3}' <<<"$key")"
  AWS_SECRET_ACCESS_KEY="$(awk '/^Secret key:/ {print $3}' <<<"$key")"
  if [ -z "$AWS_ACCESS_KEY_ID" ] || [ -z "$AWS_SECRET_ACCESS_KEY" ]; then
    printf 'could not read the key from `garage key create`:\n%s\n' "$key" >&2
    return 1
  fi
  export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_REGION=garage AWS_ALLOW_HTTP=true
  export AWS_ENDPOINT="$AWS_ENDPOINT_URL"
  export EASEL_TEST_S3_URL="s3://easel-test"
  echo "Garage $("${g[@]}" --version 2>/dev/null | awk '{sub(/^cargo:/, "", $2); print $2}') on $AWS_ENDPOINT_URL (bucket easel-test)"
}

easel_services_stop() {
  if [ -n "${EASEL_GARAGE_PID:-}" ]; then
    kill "$EASEL_GARAGE_PID" 2>/dev/null && wait "$EASEL_GARAGE_PID" 2>/dev/null
  fi
  if [ -n "${EASEL_PG_DATA:-}" ] && [ -f "$EASEL_PG_DATA/postmaster.pid" ]; then
    easel_as_pg_user "$EASEL_PG_CTL" -D "$EASEL_PG_DATA" -m immediate stop >/dev/null 2>&1
  fi
  [ -z "${EASEL_SERVICES_DIR:-}" ] || rm -rf "$EASEL_SERVICES_DIR"
}

easel_services_start() {
  EASEL_SERVICES_DIR="$(mktemp -d "${TMPDIR:-/tmp}/easel-services.XXXXXX")"
  chmod 755 "$EASEL_SERVICES_DIR"
  trap easel_services_stop EXIT
  local started=$SECONDS
  easel_postgres_start || return 1
  echo "  (PostgreSQL ready in $((SECONDS - started))s)"
  started=$SECONDS
  easel_garage_start || return 1
  echo "  (Garage ready in $((SECONDS - started))s)"
  export EASEL_TEST_REQUIRE_SERVICES=1
}
