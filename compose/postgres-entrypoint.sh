#!/bin/sh
# First start: make the cluster in $PGDATA (password auth for every network client), then the
# databases. Later starts find PG_VERSION and only serve. Runs as the postgres user.
set -eu
: "${POSTGRES_USER:=hpo}" "${POSTGRES_DATABASES:=optuna mlflow}"
# compose/.env names it LEANHPO_PG_PASSWORD, as the trainer's overlay does.
POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-${LEANHPO_PG_PASSWORD:-}}
if [ -z "$POSTGRES_PASSWORD" ]; then
  echo "neither POSTGRES_PASSWORD nor LEANHPO_PG_PASSWORD is set (compose/.env, see compose/env.example)" >&2; exit 1
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
  for db in $POSTGRES_DATABASES; do createdb --username="$POSTGRES_USER" "$db"; done
  pg_ctl -w -m fast stop >/dev/null
  echo "cluster ready: user $POSTGRES_USER, databases $POSTGRES_DATABASES"
fi
exec postgres -c listen_addresses='*'
