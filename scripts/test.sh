#!/usr/bin/env bash
# Runs every test: unit tests (release and ASan/UBSan builds), CLI and server black-box tests,
# the web page in a headless browser, the AWS deployment (template checks and a local bootstrap run),
# and a short libFuzzer smoke run of each fuzz target.
#   FUZZ_SECONDS=N  seconds per fuzz target (default 20; 0 skips fuzzing)
#   SKIP_ASAN=1     skip the sanitizer build (quick local iterations)
#   SKIP_CUDA=1     skip the CUDA compile check (it runs when /usr/local/cuda/bin/nvcc exists)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
jobs=$(nproc)
# ctest runs $jobs test processes at once, each with an OpenMP pool of its own: with the
# default (spinning) wait policy, oversubscribed threads burn their time slices at barriers
# and the tiny-model tests run 3-10x slower. Passive waiting makes them sleep instead.
export OMP_WAIT_POLICY=passive
# Each stage's start prints the minutes and seconds since the run began: CI has an hour on two
# cores, and these stamps show where it goes.
stage() { printf '== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
"$here/scripts/deps.sh"

stage "format check"
mapfile -t sources < <(git ls-files 'src/*.cc' 'src/*.h' 'src/*.cu' 'tests/unit/*.cc' 'tests/unit/*.h' 'fuzz/*.cc' 'bench/*.cc' 'bench/*.h' \
                        | grep -v 'unicode_tables')
clang-format --dry-run --Werror "${sources[@]}"

stage "release build"
cmake --preset release >/dev/null
cmake --build build/release -j "$jobs"
stage "release unit tests"
ctest --test-dir build/release --output-on-failure -j "$jobs"

stage "CLI black-box tests"
SDSERVE_BIN="$here/build/release/sdserve" python3 -m pytest -q tests/e2e

stage "web page tests (Playwright + Debian's chromium, headless)"
SDSERVE_BIN="$here/build/release/sdserve" python3 -m pytest -q tests/web

stage "AWS deployment tests (cfn-lint, checkov, shellcheck, template assertions, moto, bootstrap)"
SDSERVE_BIN="$here/build/release/sdserve" python3 -m pytest -q tests/deploy

if [[ -x /usr/local/cuda/bin/nvcc && "${SKIP_CUDA:-0}" != 1 ]]; then
  # The CUDA build must compile here although nothing can run it: its GPU tests run on a lent GPU
  # (tools/device/run_gpu_checks.sh) and skip here, saying so. CI compiles sm_75 and sm_90, one
  # of each code path our kernels have (__CUDA_ARCH__ < 800 and >= 800; sm_86 and sm_89 take the
  # sm_90 path), to stay inside the hour; the `cuda` preset builds all four targets.
  stage "CUDA build (compile only, sm_75 + sm_90; GPU tests skip without a GPU)"
  PATH=/usr/local/cuda/bin:$PATH cmake --preset cuda -DSDSERVE_BUILD_BENCH=ON "-DCMAKE_CUDA_ARCHITECTURES=${CI_CUDA_ARCHS:-75;90}" >/dev/null
  PATH=/usr/local/cuda/bin:$PATH cmake --build build/cuda -j "$jobs" --target sdserve sdserve_unit_tests sdserve_bench
  build/cuda/sdserve_unit_tests --gtest_brief=1 --gtest_filter='Cuda*:*/Cuda*:Device.*'
fi

# One clang build serves the sanitizers and the fuzzers (the `sanitize` preset): every object
# carries ASan/UBSan and libFuzzer's coverage instrumentation; the unit tests and the server
# link without the fuzzer's main, the fuzz targets with it. (A gcc ASan build and a clang fuzz
# build of the same sources cost CI about ten minutes more.)
fuzz_seconds=${FUZZ_SECONDS:-20}
if [[ "${SKIP_ASAN:-0}" != 1 ]]; then
  stage "ASan/UBSan build (clang; also the fuzz targets)"
  cmake --preset sanitize >/dev/null
  cmake --build build/sanitize -j "$jobs"
  fuzz_dir=build/sanitize
  stage "ASan/UBSan unit tests"
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/sanitize --output-on-failure -j "$jobs"
  # The HTTP service under ASan/UBSan: the server's black-box tests (the load test in its short
  # version) against the sanitized binary; any report aborts the server and fails its test.
  stage "ASan/UBSan server tests"
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    SDSERVE_E2E_SANITIZED=1 SDSERVE_E2E_LOAD_JOBS=100 SDSERVE_BIN="$here/build/sanitize/sdserve" \
    python3 -m pytest -q tests/e2e/test_server.py tests/e2e/test_a1111_api.py tests/e2e/test_url_fetch.py \
      tests/e2e/test_web_routes.py
elif ((fuzz_seconds > 0)); then
  stage "fuzz build"
  cmake --preset fuzz >/dev/null
  cmake --build build/fuzz -j "$jobs"
  fuzz_dir=build/fuzz
fi

if ((fuzz_seconds > 0)); then
  stage "fuzz runs (${fuzz_seconds}s per target)"
  for target in "$fuzz_dir"/fuzz_*; do
    name=$(basename "$target")
    corpus_src="fuzz/corpus/${name#fuzz_}"
    work=$(mktemp -d)
    [[ -d "$corpus_src" ]] && cp -r "$corpus_src/." "$work/"
    dict=()
    [[ -f "fuzz/${name#fuzz_}.dict" ]] && dict=(-dict="fuzz/${name#fuzz_}.dict")
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$target" "$work" "${dict[@]}" -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      2> "$fuzz_dir/$name.log" || { tail -50 "$fuzz_dir/$name.log"; exit 1; }
    grep -E "stat::number_of_executed_units" "$fuzz_dir/$name.log" | sed "s/^/$name: /"
    rm -rf "$work"
  done
fi
stage "all tests passed"
