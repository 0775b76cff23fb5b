#!/usr/bin/env bash
# Install if needed (with dev extras), lint, then run the test suite: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh dev
# the dashboard's browser test (tests/test_dashboard.py) drives Debian's Chromium: install it
# once where we may (root, or sudo without a password); elsewhere that test is skipped
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    echo "installing chromium and chromium-driver (apt-get) for the browser test" >&2
    { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "chromium not installed: the browser test will be skipped" >&2
  fi
fi
ruff check .
exec python -m pytest -q "$@"
