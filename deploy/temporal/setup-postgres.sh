#!/bin/sh
# One-shot: create Temporal's two databases on PostgreSQL and bring their schemas up to the
# version this admin-tools image ships. Safe to run on every `docker compose up`: `create`
# ignores an existing database, `setup-schema -v 0.0` leaves a newer schema version alone and
# `update-schema` applies only the versions that are missing (the same steps the deprecated
# auto-setup image ran on every start).
#
# Follows temporalio/samples-server compose/scripts/setup-postgres.sh (the successor of the
# archived temporalio/docker-compose repository), with the connection taken from the
# environment instead of hard-coded. temporal-sql-tool reads the password from SQL_PASSWORD,
# so it stays off the command line.
set -eu

: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${SQL_PASSWORD:?}"
DB_PORT="${DB_PORT:-5432}"
DBNAME="${DBNAME:-temporal}"
VISIBILITY_DBNAME="${VISIBILITY_DBNAME:-temporal_visibility}"
SCHEMA_DIR=/etc/temporal/schema/postgresql/v12

echo "waiting for PostgreSQL at ${POSTGRES_SEEDS}:${DB_PORT}"
tries=0
until nc -z -w 2 "${POSTGRES_SEEDS}" "${DB_PORT}"; do
  tries=$((tries + 1))
  if [ "${tries}" -ge 30 ]; then
    echo "PostgreSQL did not open its port" >&2
    exit 1
  fi
  sleep 2
done

sql() {
  db="$1"
  shift
  temporal-sql-tool --plugin postgres12 --ep "${POSTGRES_SEEDS}" -p "${DB_PORT}" \
    -u "${POSTGRES_USER}" --db "${db}" "$@"
}

sql "${DBNAME}" create
sql "${DBNAME}" setup-schema -v 0.0
sql "${DBNAME}" update-schema -d "${SCHEMA_DIR}/temporal/versioned"

sql "${VISIBILITY_DBNAME}" create
sql "${VISIBILITY_DBNAME}" setup-schema -v 0.0
sql "${VISIBILITY_DBNAME}" update-schema -d "${SCHEMA_DIR}/visibility/versioned"

echo "Temporal schema ready in ${DBNAME} and ${VISIBILITY_DBNAME}"
