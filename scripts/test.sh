#!/usr/bin/env bash
# Build Strata and run every test: the Rust workspace tests, then the Python
# end-to-end suite in tests/ against target/release/strata.
#
# Installs what is missing first (kcat, PostgreSQL and Node.js/npm through apt-get,
# the Python clients and moto through pip; the kafkajs tests run `npm install` in
# tests/js themselves, from its package-lock.json). Works from any directory, as
# a normal user (apt through sudo) or as root, as CI runs it. Extra arguments go
# to pytest, e.g.
#   scripts/test.sh -k roundtrip -x
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '\n==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian installs the PostgreSQL server tools outside PATH.
add_postgres_to_path() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$dir" ]; then export PATH="$dir:$PATH"; fi
}

# --- system packages --------------------------------------------------------------
command -v initdb >/dev/null 2>&1 || add_postgres_to_path
missing=()
command -v kcat >/dev/null 2>&1 || command -v kafkacat >/dev/null 2>&1 || missing+=(kcat)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# Headless Chromium loads the status page in tests/test_status_page.py.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v initdb >/dev/null 2>&1 || ! command -v pg_ctl >/dev/null 2>&1 \
    || ! command -v psql >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  add_postgres_to_path
fi
# PostgreSQL refuses to run as root; the tests run it as the postgres user.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi

# --- Python packages ----------------------------------------------------------------
# zstandard/lz4/python-snappy let kafka-python decode batches the broker compresses;
# requests drives the REST front end and schemathesis checks it against its OpenAPI document;
# opentelemetry-proto decodes what the broker exports to the test's OTLP receiver.
if ! python3 -c 'import confluent_kafka, kafka, aiokafka, moto, flask, flask_cors, pytest, zstandard, lz4.frame, snappy, aioquic, requests, schemathesis, opentelemetry.proto' \
    >/dev/null 2>&1; then
  log "pip install test dependencies"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
    confluent-kafka kafka-python aiokafka 'moto[server]' pytest zstandard lz4 python-snappy aioquic \
    requests schemathesis opentelemetry-proto
fi

# --- Rust -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
log "cargo build --release --workspace"
cargo build --release --workspace
# A throwaway PostgreSQL for the Rust catalog suite (the end-to-end suite starts its own).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_dir="$(mktemp -d)"
[ "$(id -u)" -eq 0 ] && chown postgres "$pg_dir"
pg_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_pg initdb -D "$pg_dir/data" --auth=trust -U postgres >/dev/null
as_pg pg_ctl -D "$pg_dir/data" -l "$pg_dir/log" -w -t 60 \
  -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1" start >/dev/null
stop_pg() { as_pg pg_ctl -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pg_dir"; }
trap stop_pg EXIT
export STRATA_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"

log "cargo test --release --workspace (catalog suite on SQLite and PostgreSQL)"
cargo test --release --workspace

# --- end-to-end -----------------------------------------------------------------------
export STRATA_BIN="${STRATA_BIN:-$ROOT/target/release/strata}"
log "pytest tests (STRATA_BIN=$STRATA_BIN)"
python3 -m pytest -q tests "$@"
