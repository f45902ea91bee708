#!/usr/bin/env bash
# System packages f2pipe's local servers need (Debian/Ubuntu). As root it installs them;
# otherwise it prints the exact command and fails, so nobody is left guessing.
set -euo pipefail

# --with-browser: also Debian's chromium, which the console's browser tests drive (make test).
with_browser=false
[ "${1:-}" = "--with-browser" ] && with_browser=true

need=()
# The console's front-end libraries come from the npm registry (scripts/build-console.sh).
command -v npm >/dev/null 2>&1 || need+=(npm)
if $with_browser; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# mosquitto_sub: `f2pipe bench capacity` drains the broker with the C client (its ceiling).
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v pg_config >/dev/null 2>&1 \
  || need+=(postgresql)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v make >/dev/null 2>&1 || need+=(make)
# Validates docker-compose.yml in the tests; needs no Docker engine.
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 \
  || need+=(docker-compose)

if [ ${#need[@]} -eq 0 ]; then
  exec "$(dirname "$0")/setup-timescaledb.sh"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: missing ${need[*]}; install them with your package manager" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing system packages. Run:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
echo "setup: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged servers; f2pipe runs its own on other ports, so stop them
# where that is possible (no harm when there is no init system).
for svc in mosquitto redis-server postgresql; do
  (command -v service >/dev/null 2>&1 && service "$svc" stop >/dev/null 2>&1) || true
done
exec "$(dirname "$0")/setup-timescaledb.sh"
