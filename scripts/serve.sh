#!/usr/bin/env bash
# Builds sdserve (CPU, release) and runs `sdserve serve` with the given arguments.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
"$here/scripts/deps.sh"
cmake --preset release -S "$here" >/dev/null
cmake --build "$here/build/release" --target sdserve
exec "$here/build/release/sdserve" serve "$@"
