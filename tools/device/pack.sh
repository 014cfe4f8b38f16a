#!/usr/bin/env bash
# Packs what the GPU checks need into .devbin/ (ignored by git) for a lent GPU machine: the CUDA
# build's test, bench and CLI binaries, plus the CPU libraries they link that such a machine's
# image may lack (oneDNN, OpenBLAS, libpng, ...). CUDA, cuBLASLt and cuDNN come from the GPU
# machine itself (run_gpu_checks.sh finds them). xz keeps the bundle under the 64 MiB a call
# may carry.
#
#   tools/device/pack.sh            # builds build/cuda (sm_90, -march=x86-64-v3) first
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/cuda/bin:$PATH
grep -q '^/.devbin/' .git/info/exclude || echo /.devbin/ >> .git/info/exclude
if [ ! -f build/cuda/build.ninja ]; then
  cmake --preset cuda -DSDSERVE_ARCH=x86-64-v3 -DCMAKE_CUDA_ARCHITECTURES=90 -DSDSERVE_BUILD_BENCH=ON
fi
ninja -C build/cuda sdserve sdserve_unit_tests sdserve_bench sdserve_lora_bench
rm -rf .devbin && mkdir -p .devbin/stage/lib
cp build/cuda/sdserve build/cuda/sdserve_unit_tests build/cuda/sdserve_bench build/cuda/sdserve_lora_bench .devbin/stage/
strip .devbin/stage/sdserve .devbin/stage/sdserve_unit_tests .devbin/stage/sdserve_bench .devbin/stage/sdserve_lora_bench
# Every non-system library the binaries link, except the CUDA ones the GPU machine has.
for b in .devbin/stage/sdserve_unit_tests .devbin/stage/sdserve_bench; do
  ldd "$b" | awk '/=> \// {print $3}'
done | sort -u | grep -v -E 'libc\.so|libm\.so|libstdc\+\+|libgcc_s|ld-linux|libcudnn|libcublas|libcuda' |
  while read -r lib; do cp -L "$lib" .devbin/stage/lib/; done
strip --strip-unneeded .devbin/stage/lib/* 2>/dev/null || true
XZ_OPT=-2 tar -C .devbin/stage -cJf .devbin/bundle.tar.xz .
rm -rf .devbin/stage
pwd > .devbin/SOURCE_DIR  # compiled into the tests as SDSERVE_SOURCE_DIR
ls -la .devbin/
