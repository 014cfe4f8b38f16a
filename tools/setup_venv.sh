#!/usr/bin/env bash
# Create the Python venv used by the fixture tools: <repo>/.venv-tools
# Usage: tools/setup_venv.sh [python-executable]   (default: python3)
# Env:   TORCH_INDEX_URL  optional extra index for torch wheels, e.g.
#        https://download.pytorch.org/whl/cpu to get a CPU-only torch.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${1:-python3}"
venv="$repo/.venv-tools"
if [[ ! -x "$venv/bin/python" ]]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --upgrade pip
extra=()
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
  extra=(--extra-index-url "$TORCH_INDEX_URL")
fi
"$venv/bin/python" -m pip install ${extra[@]+"${extra[@]}"} -r "$repo/requirements-dev.txt"
echo "ok: $venv  (activate with: source $venv/bin/activate)"
