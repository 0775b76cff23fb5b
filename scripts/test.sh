#!/usr/bin/env bash
# Install if needed (with dev extras), lint, then run the test suite: `bash scripts/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh dev
ruff check .
exec python -m pytest -q "$@"
