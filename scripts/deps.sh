#!/usr/bin/env bash
# Installs the build and test dependencies from Debian and PyPI (idempotent).
# Needs root for apt-get; when not root and everything is present it does nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

# ocl-icd-opencl-dev: Debian's oneDNN config (dnnl-config.cmake) looks for OpenCL; its package only
# recommends it, and we install without recommends.
pkgs=(cmake ninja-build g++ clang lld libclang-rt-14-dev pkg-config
      libdnnl-dev ocl-icd-opencl-dev libopenblas-dev nlohmann-json3-dev libcli11-dev zlib1g-dev libpng-dev
      libjpeg62-turbo-dev libwebp-dev
      libcpp-httplib-dev libssl-dev libbrotli-dev
      libgtest-dev libgmock-dev libbenchmark-dev python3 python3-pip python3-venv
      chromium  # the web page's browser tests (Playwright drives Debian's chromium)
      shellcheck patchelf curl)  # the AWS deployment's scripts, release tarball and bootstrap test
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Test-only Python packages (small; PyTorch is never needed here).
if ! python3 -c "import pytest, webuiapi, playwright, cfnlint, moto" 2>/dev/null; then
  python3 -m pip install -q -r "$here/requirements-test.txt"
fi
# checkov (tests/deploy) in a venv of its own: its pins conflict with pytest's.
if [[ ! -x "$here/build/venv-checkov/bin/checkov" ]]; then
  python3 -m venv "$here/build/venv-checkov"
  "$here/build/venv-checkov/bin/pip" install -q -r "$here/tests/deploy/requirements-checkov.txt"
fi
