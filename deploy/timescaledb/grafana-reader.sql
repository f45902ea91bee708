-- The read-only role Grafana logs in with. Run once, by the database owner, before the
-- migrations (the timescaledb container runs it at initdb through grafana-reader.sh):
--   psql -v reader=grafana_reader -v password=... -v owner=f2pipe -f grafana-reader.sql
-- Default privileges give it USAGE on every schema and SELECT on every table and view that
-- `owner` creates later, i.e. everything `f2pipe migrate` creates; it can change nothing.
CREATE ROLE :"reader" LOGIN PASSWORD :'password';
ALTER ROLE :"reader" SET default_transaction_read_only = on;
ALTER ROLE :"reader" SET statement_timeout = '60s';
-- JIT compiled for ~100 ms in each 24 h panel's plan, more than the query ran (bench growth).
ALTER ROLE :"reader" SET jit = off;
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT USAGE ON SCHEMAS TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" GRANT SELECT ON TABLES TO :"reader";
