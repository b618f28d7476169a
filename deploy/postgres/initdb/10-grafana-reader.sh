#!/bin/sh
# Grafana's read-only role on the run store. Grafana's run-store datasource logs in as this role,
# never with the writer's credentials: it may SELECT the run-store tables (also those the writer's
# migrations create later) and nothing else; its sessions default to read-only transactions.
#
# The postgres image runs this once, when it initialises its data volume. It is idempotent, so on
# an existing volume run it by hand:  docker compose exec postgres sh /docker-entrypoint-initdb.d/10-grafana-reader.sh
# The password comes from the environment and is read by psql itself (\getenv): it never appears
# on a command line or in the output.
set -eu
export FEATUREDRIFT_GRAFANA_DB_USER="${FEATUREDRIFT_GRAFANA_DB_USER:-featuredrift_grafana}"
: "${FEATUREDRIFT_GRAFANA_DB_PASSWORD:?expected the Grafana reader password in FEATUREDRIFT_GRAFANA_DB_PASSWORD, found none}"
: "${POSTGRES_USER:?expected the run-store writer role in POSTGRES_USER, found none}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" <<'SQL'
\getenv reader FEATUREDRIFT_GRAFANA_DB_USER
\getenv password FEATUREDRIFT_GRAFANA_DB_PASSWORD
\getenv writer POSTGRES_USER
SELECT format('CREATE ROLE %I', :'reader') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec
ALTER ROLE :"reader" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT PASSWORD :'password';
ALTER ROLE :"reader" SET default_transaction_read_only = on;
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'reader') \gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"writer" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
SQL
echo "featuredrift: read-only role $FEATUREDRIFT_GRAFANA_DB_USER can SELECT the run store"
