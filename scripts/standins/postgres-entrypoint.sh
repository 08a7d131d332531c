#!/bin/sh
# The entrypoint of the postgres stand-in (postgres.Dockerfile): the official image's first start in
# short. An empty $PGDATA gets a cluster whose superuser is POSTGRES_USER with POSTGRES_PASSWORD,
# the database POSTGRES_DB, password (SCRAM) logins from any address; then the server runs.
set -eu
PATH=$(echo /usr/lib/postgresql/*/bin):$PATH
export PATH

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "error: the database is not initialised and POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  user=${POSTGRES_USER:-postgres}
  database=${POSTGRES_DB:-$user}
  secrets=$(mktemp -d)
  (umask 077 && printf '%s\n' "$POSTGRES_PASSWORD" >"$secrets/password")
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$secrets/password" \
    --auth-local=trust --auth-host=scram-sha-256 >&2
  rm -rf "$secrets"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [ "$database" != postgres ]; then
    # A server on a socket of its own, so the healthcheck passes only once the real one runs.
    socket=$(mktemp -d)
    pg_ctl --pgdata="$PGDATA" --wait --silent -o "-c listen_addresses='' -c unix_socket_directories=$socket" start
    psql --host="$socket" --username="$user" --dbname=postgres --quiet -v ON_ERROR_STOP=1 \
      -c "CREATE DATABASE \"$database\""
    pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
    rmdir "$socket"
  fi
fi
exec "$@"
