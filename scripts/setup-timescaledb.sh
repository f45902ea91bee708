#!/usr/bin/env bash
# TimescaleDB for the local servers (tests, `make dev`), from the unmodified upstream build
# the project keeps beside the repository: ../shared/timescaledb/timescaledb-*-pg15-*.tar.gz
# (or F2PIPE_TIMESCALEDB_TARBALL). Installs it into PostgreSQL 15's directories with the
# tarball's own install.sh, as root; idempotent. Anything missing: it says why and skips.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
tarball=${F2PIPE_TIMESCALEDB_TARBALL:-}
if [ -z "$tarball" ]; then
  tarball=$(ls "$here"/../shared/timescaledb/timescaledb-*-pg15-*.tar.gz 2>/dev/null | tail -n 1 || true)
fi
skip() { echo "setup: TimescaleDB skipped: $*" >&2; exit 0; }

[ -n "$tarball" ] && [ -f "$tarball" ] || skip "no tarball in ../shared/timescaledb/ (tests use plain PostgreSQL)"
pg_config=/usr/lib/postgresql/15/bin/pg_config
[ -x "$pg_config" ] || skip "the PostgreSQL server here is not 15 ($(ls /usr/lib/postgresql 2>/dev/null | tr '\n' ' '))"
# The build links against symbols PostgreSQL 15.18 lacks (heap_datum_check: "could not load
# library … undefined symbol"); 15.20, Debian 12's security update, loads it.
min_minor=20
minor=$("$pg_config" --version | sed -n 's/^PostgreSQL 15\.\([0-9]*\).*/\1/p')
if [ -n "$minor" ] && [ "$minor" -lt "$min_minor" ]; then
  [ "$(id -u)" -eq 0 ] || skip "PostgreSQL 15.$minor cannot load it (needs 15.$min_minor): sudo apt-get install postgresql-15"
  echo "setup: upgrading PostgreSQL 15.$minor to Debian's current 15.x (TimescaleDB needs 15.$min_minor)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --only-upgrade postgresql-15 postgresql-client-15 >/dev/null
  (command -v service >/dev/null 2>&1 && service postgresql stop >/dev/null 2>&1) || true
  minor=$("$pg_config" --version | sed -n 's/^PostgreSQL 15\.\([0-9]*\).*/\1/p')
  [ "$minor" -ge "$min_minor" ] || skip "PostgreSQL is still 15.$minor after the upgrade"
fi
name=$(basename "$tarball" .tar.gz)               # timescaledb-2.28.3-pg15-debian12-amd64
version=$(echo "$name" | sed -n 's/^timescaledb-\([0-9.]*\)-.*/\1/p')
if [ -f "$("$pg_config" --pkglibdir)/timescaledb-$version.so" ] \
   && [ -f "$("$pg_config" --sharedir)/extension/timescaledb--$version.sql" ]; then
  exit 0  # installed; install.sh would only check and leave it alone
fi
[ "$(id -u)" -eq 0 ] || skip "not root; run: sudo PG_CONFIG=$pg_config sh <unpacked $name>/install.sh"
if [ -f "$tarball.sha256" ]; then
  (cd "$(dirname "$tarball")" && sha256sum --quiet -c "$(basename "$tarball").sha256") \
    || { echo "setup: $tarball does not match its .sha256" >&2; exit 1; }
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
echo "setup: installing TimescaleDB $version for PostgreSQL 15"
PG_CONFIG=$pg_config sh "$work/$name/install.sh"
