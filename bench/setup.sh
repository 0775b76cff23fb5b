#!/usr/bin/env bash
# Install what the benchmarks in bench/ need into the project venv, without touching torch.
#
#   bash bench/setup.sh        # then: .venv/bin/python bench/learner.py / bench/quality.py
#
# The project venv comes from scripts/setup.sh (torch 2.13.0 CPU, streamnorm, dev extras: pytest,
# which deep-river imports). deep-river 0.3.4 declares torch<2.6 and river<0.26: a plain install
# would replace torch with a multi-GB CUDA build, so it goes in with --no-deps, and its real
# dependencies are installed next to it with torch pinned by a constraint file.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" dev
PY="${STREAMNORM_VENV:-$ROOT/.venv}/bin/python"

TORCH="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH" > "$CONSTRAINTS"

"$PY" -m pip install --quiet --no-deps "deep-river==0.3.4"
"$PY" -m pip install --quiet -c "$CONSTRAINTS" \
  "river==0.25.*" "pandas>=2.2,<3" scikit-learn matplotlib sortedcontainers tqdm

"$PY" - <<'EOF'
import deep_river, river, sklearn, matplotlib, torch
print(f"bench deps: torch {torch.__version__}, deep-river {deep_river.__version__}, "
      f"river {river.__version__}, scikit-learn {sklearn.__version__}, "
      f"matplotlib {matplotlib.__version__}")
EOF
