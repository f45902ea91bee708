#!/usr/bin/env bash
# The operator console's front-end libraries: installed from the npm registry at the exact
# versions services/api/console/package-lock.json pins (npm ci, no install scripts), then
# copied into the api package (services/api/f2pipe_api/console/vendor/, not in git), where
# the api serves them. Nothing is fetched at run time. --production leaves out the test-only
# packages (axe-core); the image build uses it. Skipped when the lock file has not changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/services/api/console"
dest="$root/services/api/f2pipe_api/console/vendor"
stamp="$src/node_modules/.f2pipe-lock.sha256"
omit=()
[ "${1:-}" = "--production" ] && omit=(--omit=dev)

if ! command -v npm >/dev/null 2>&1; then
  echo "build-console: npm is missing (Debian/Ubuntu: apt-get install npm; make setup does it)" >&2
  exit 1
fi
want="$(sha256sum "$src/package-lock.json" | cut -d' ' -f1) ${omit[*]:-}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dest/htm-preact.js" ]; then
  exit 0
fi
(cd "$src" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error "${omit[@]}")
mkdir -p "$dest"
modules="$src/node_modules"
cp "$modules/htm/preact/standalone.module.js" "$dest/htm-preact.js"
cp "$modules/uplot/dist/uPlot.esm.js" "$dest/uPlot.esm.js"
cp "$modules/uplot/dist/uPlot.min.css" "$dest/uPlot.min.css"
cat "$modules/htm/LICENSE" "$modules/uplot/LICENSE" > "$dest/LICENSES.txt" 2>/dev/null || true
echo "$want" > "$stamp"
echo "build-console: vendor files in $dest"
