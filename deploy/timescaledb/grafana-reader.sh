#!/bin/sh
# docker-entrypoint-initdb.d hook of the timescaledb container (runs once, on an empty data
# directory): creates Grafana's read-only role from GRAFANA_DB_USER / GRAFANA_DB_PASSWORD.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v reader="${GRAFANA_DB_USER:-grafana_reader}" \
    -v password="$GRAFANA_DB_PASSWORD" \
    -v owner="$POSTGRES_USER" \
    -f /usr/share/f2pipe/grafana-reader.sql
