#!/usr/bin/env bash
# Set up, then run the test suite. The browser tests need Debian's chromium + chromium-driver: installed here
# when missing (as root). The longer checks (-m slow: real model; -m load: serve load test; -m faults: every
# fault-injection trial; -m fuzz: many examples per file loader) run afterwards when time allows: always under
# CI (CI=true) or with --slow, bounded by SAELIGN_SLOW_BUDGET seconds (default 2400).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null
  else
    echo "chromium/chromium-driver missing and not root: the browser tests will skip (apt-get install chromium chromium-driver)"
  fi
fi
export SAELIGN_QUIET=1
.venv/bin/python -m pytest -q
if [ "${CI:-}" = "true" ] || [ "${1:-}" = "--slow" ]; then
  timeout "${SAELIGN_SLOW_BUDGET:-2400}" .venv/bin/python -m pytest -q -m "slow or load or faults or fuzz" || {
    rc=$?; [ $rc -eq 124 ] && { echo "slow suite stopped at its time budget"; exit 0; }; exit $rc; }
fi
