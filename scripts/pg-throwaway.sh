#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster: a temp folder owned by the `postgres` user, trust auth,
# a free port on 127.0.0.1. Source it; it exports DATABASE_URL and stops the cluster at exit.
#
#   source scripts/pg-throwaway.sh   # then DATABASE_URL=postgres://postgres@127.0.0.1:PORT/postgres
set -euo pipefail

pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

if ! PG_BIN=$(pg_bin); then
  echo "PostgreSQL server binaries not found; installing them (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  PG_BIN=$(pg_bin)
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

PG_DIR=$(mktemp -d /tmp/tenantry-pg.XXXXXX)
PG_PORT=$(free_port)
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    su postgres -s /bin/sh -c "$*"
  else
    sh -c "$*"
  fi
}
[ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
as_pg "'$PG_BIN/initdb' -D '$PG_DIR/data' -A trust -U postgres --no-sync -E UTF8 >'$PG_DIR/initdb.log' 2>&1" \
  || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
# Tuned for a test cluster on a small machine: durable commits stay on (the store's guarantees are
# about durable commits), connections are plentiful for parallel tests.
as_pg "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -l '$PG_DIR/server.log' -w -t 60 \
  -o \"-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=400 \
  -c shared_buffers=256MB -c fsync=on -c synchronous_commit=on\" start >/dev/null" \
  || { cat "$PG_DIR/server.log" >&2; exit 1; }

stop_throwaway_pg() {
  as_pg "'$PG_BIN/pg_ctl' -D '$PG_DIR/data' -m immediate -w stop >/dev/null 2>&1" || true
  rm -rf "$PG_DIR"
}
trap stop_throwaway_pg EXIT
export PG_BIN PG_DIR PG_PORT
export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
echo "throwaway PostgreSQL on port $PG_PORT ($PG_DIR)" >&2
