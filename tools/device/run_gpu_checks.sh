#!/usr/bin/env bash
# Runs on a lent GPU machine (the `device` tool), from the repository root, with .devbin/ carried
# (tools/device/pack.sh made it). Writes logs under $OUT (default /tmp/out) and prints a short
# summary last.
#
#   tools/device/run_gpu_checks.sh [tests|bench|lora|rng|all]...   (default: all)
#   env: SHARDS, TEST_TIMEOUT, BATCHES (1,4), SIDES (eager,sdserve,nograph,profile,compile; also transposing, nolend),
#        COMPILE_MODE (default), DEADLINE (seconds since start the bench must end by)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
what=${*:-all}
root=$(pwd)
# The test binary reads fixtures from the source dir compiled into it (this machine's checkout).
src_dir=$(cat .devbin/SOURCE_DIR)
if [ "$root" != "$src_dir" ] && [ ! -e "$src_dir" ]; then mkdir -p "$(dirname "$src_dir")" && ln -s "$root" "$src_dir"; fi
work=/tmp/sdserve-dev
rm -rf "$work" && mkdir -p "$work" && tar -C "$work" -xJf .devbin/bundle.tar.xz

# cuBLASLt and cuDNN: the CUDA toolkit's, else the pip wheels PyTorch uses.
libdirs=""
for pat in 'libcudnn.so.9' 'libcublasLt.so.13'; do
  f=$(find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu /opt /usr/local/lib -name "$pat" 2>/dev/null | head -1)
  [ -n "$f" ] && libdirs="$libdirs:$(dirname "$f")"
done
export LD_LIBRARY_PATH="$work/lib$libdirs:${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/env.txt"
ldd "$work/sdserve_unit_tests" | grep -E "not found|cudnn|cublas" | tee -a "$OUT/env.txt"
summary=()

if [[ " $what " == *" all "* || " $what " == *" tests "* ]]; then
  # CUDA tests, the device-parameterised op tests, the GPU twin of the txt2img parity suite and
  # every test whose parameter names a CUDA device (LoraParity, LoraMath, LoraFactorCache:
  # ".../cuda_..."), in parallel shards (16 cores; the GPU is shared). SDSERVE_SOURCE_DIR is
  # compiled in; the fixtures are read from this checkout through the link above.
  filter='*Cuda*:Device.*:AllDevices/OpTest.*cuda*:*/cuda*'
  shards=${SHARDS:-8}
  for i in $(seq 0 $((shards - 1))); do
    (cd "$root" && GTEST_TOTAL_SHARDS=$shards GTEST_SHARD_INDEX=$i OMP_NUM_THREADS=2 timeout "${TEST_TIMEOUT:-150}" \
       "$work/sdserve_unit_tests" --gtest_filter="$filter" --gtest_brief=1 > "$OUT/tests.$i.log" 2>&1; \
     echo "exit $?" >> "$OUT/tests.$i.log") &
  done
  wait
  cat "$OUT"/tests.*.log > "$OUT/tests.log"
  grep -E "Failure|FAILED|error|Expected|Which is|exit [^0]" "$OUT/tests.log" | head -60
  summary+=("tests: $(grep -hE '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/tests.log" | awk '{s[$2]+=$4} END {for (k in s) printf "%s %d ", k, s[k]}')")
fi

if [[ " $what " == *" all "* || " $what " == *" rng "* ]]; then
  (cd "$root" && timeout "${RNG_TIMEOUT:-40}" python3 tools/record_cuda_rng.py --out "$OUT/cuda_torch_rng.json" 2>&1 | tail -5)
  summary+=("rng: $(ls -la "$OUT/cuda_torch_rng.json" 2>/dev/null | awk '{print $5}') bytes")
fi

if [[ " $what " == *" all "* || " $what " == *" bench "* ]]; then
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
      export PYTHONPATH=/tmp/site
  fi
  left=$(( ${DEADLINE:-540} - SECONDS ))
  (cd "$root" && SDSERVE_BENCH_PYTHON=python3 PYTHONUNBUFFERED=1 timeout $((left + 10)) python3 bench/run_bench.py \
     --device cuda --batches "${BATCHES:-1,4}" --sides "${SIDES:-eager,sdserve,nograph,profile,compile}" \
     --compile-mode "${COMPILE_MODE:-default}" --deadline "$left" \
     --bin "$work/sdserve_bench" --cache /tmp/bench-cache --json-out "$OUT/gpu_bench.json" 2>&1 |
     tee "$OUT/bench.log" | tail -30)
  summary+=("bench: $(tail -1 "$OUT/bench.log")")
fi
if [[ " $what " == *" all "* || " $what " == *" lora "* ]]; then
  if [ -d .whl ] && [ -z "${PYTHONPATH:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
      export PYTHONPATH=/tmp/site
  fi
  (cd "$root" && SDSERVE_BENCH_PYTHON=python3 PYTHONUNBUFFERED=1 timeout "${LORA_TIMEOUT:-150}" python3 bench/run_lora_bench.py \
     --device cuda --dtype f16 --ranks "${LORA_RANKS:-32,128}" --locon --bin "$work/sdserve_lora_bench" \
     --cache /tmp/bench-cache --json-out "$OUT/lora_bench.json" 2>&1 | tee "$OUT/lora.log" | tail -25)
  summary+=("lora: $(tail -1 "$OUT/lora.log" | cut -c1-300)")
fi
printf '%s\n' "${summary[@]}"
