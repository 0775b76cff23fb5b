#!/usr/bin/env bash
# Install if needed, then run the HTTP service: `bash scripts/serve.sh [--port 8000 ...]`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh ""
exec streamnorm serve "$@"
