#!/usr/bin/env bash
# Builds the release tarball that the AWS bootstrap (deploy/aws/bootstrap.sh) installs:
#
#   dist/sdserve-VERSION-linux-x86_64[-cuda].tar.gz   and   .tar.gz.sha256 ("HEX  NAME")
#
#   scripts/package.sh                      # from build/release (CPU build)
#   scripts/package.sh --build-dir build/cuda   # GPU build: the name gets -cuda
#   scripts/package.sh --build-dir DIR --out DIR
#
# The binary must exist (build it first: cmake --preset release|cuda && cmake --build build/...).
# Layout (one top-level folder, sdserve-VERSION-linux-x86_64[-cuda]/):
#   bin/sdserve                 stripped; RUNPATH $ORIGIN/../lib (patchelf), or a wrapper script
#                               that sets LD_LIBRARY_PATH when patchelf is missing
#   lib/                        the shared libraries it links that a glibc >= 2.36 system may lack
#                               (oneDNN, OpenBLAS, libpng, libjpeg, libwebp, cpp-httplib, ...)
#   share/sdserve/BUILDINFO     version, flavour, glibc it was built against, CUDA/cuDNN/cuBLAS
#                               versions (the bootstrap installs exactly those), required sonames
#   share/sdserve/aws/          the instance files: systemd units, lifecycle and backlog agents,
#                               CloudWatch agent config, logrotate, a copy of bootstrap.sh
#   LICENSE (if the repo has one), NOTICES (each bundled library's Debian copyright file)
#
# Not bundled: the glibc family (libc, libm, ld-linux, ...), libstdc++ and libgcc_s (newer
# distributions ship newer, backward-compatible ones), libssl/libcrypto (soname libssl.so.3 is
# ABI-stable across OpenSSL 3.x and the system's copy gets security updates), and for CUDA
# builds libcuda (the driver's), cuDNN and cuBLAS/cuBLASLt (the bootstrap installs the pinned
# versions recorded in BUILDINFO from NVIDIA's apt repository). The CUDA runtime is linked
# statically.
#
# The tarball is reproducible for a given binary (sorted entries, fixed mtime, numeric owner,
# gzip -n). SOURCE_DATE_EPOCH overrides the mtime (default: the last commit's date, else 0).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build_dir="$here/build/release"
out_dir="$here/dist"

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
while (($#)); do
  case "$1" in
    --build-dir) build_dir=$2; shift 2 ;;
    --out) out_dir=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "package: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

bin="$build_dir/sdserve"
[[ -x "$bin" ]] || { echo "package: error: $bin not found; build it first (cmake --build $build_dir)" >&2; exit 1; }
version=$("$bin" --version | awk '{print $2}')
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || { echo "package: error: cannot read the version from '$bin --version'" >&2; exit 1; }

# Every shared library the loader resolves for the binary (transitively), as "soname path".
mapfile -t linked < <(ldd "$bin" | awk '/=> \// {print $1, $3}')
if ldd "$bin" | grep -q 'not found'; then
  echo "package: error: $bin has unresolved libraries:" >&2
  ldd "$bin" | grep 'not found' >&2
  exit 1
fi

flavour=cpu
for entry in "${linked[@]}"; do
  [[ "${entry%% *}" == libcudnn* ]] && flavour=cuda
done
name="sdserve-$version-linux-x86_64"
[[ $flavour == cuda ]] && name+="-cuda"

# Sonames that stay with the system (see the header).
system_re='^(libc|libm|libdl|libpthread|librt|libresolv|libutil|libanl|ld-linux-x86-64|libstdc\+\+|libgcc_s|libssl|libcrypto)\.so'
cuda_re='^(libcuda|libcudnn[a-z_]*|libcublas|libcublasLt|libcudart|libnvrtc[a-z-]*|libnvJitLink)\.so'

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/bin" "$root/lib" "$root/share/sdserve/aws"

bundled=() required=()
for entry in "${linked[@]}"; do
  soname=${entry%% *} path=${entry#* }
  if [[ $soname =~ $system_re ]]; then
    required+=("$soname")
  elif [[ $soname =~ $cuda_re ]]; then
    required+=("$soname")
  else
    cp -L "$path" "$root/lib/$soname"
    chmod 0644 "$root/lib/$soname"
    bundled+=("$soname:$path")
  fi
done
strip --strip-unneeded "$root"/lib/* 2>/dev/null || true

if command -v patchelf >/dev/null; then
  cp "$bin" "$root/bin/sdserve"
  strip "$root/bin/sdserve"
  # shellcheck disable=SC2016 # $ORIGIN is for the dynamic loader, not the shell
  patchelf --set-rpath '$ORIGIN/../lib' "$root/bin/sdserve"
  # RUNPATH is not inherited: each bundled library finds its own dependencies next to itself.
  # shellcheck disable=SC2016
  for lib in "$root"/lib/*; do patchelf --set-rpath '$ORIGIN' "$lib"; done
  launcher=runpath
else
  mkdir -p "$root/libexec"
  cp "$bin" "$root/libexec/sdserve"
  strip "$root/libexec/sdserve"
  cat > "$root/bin/sdserve" <<'EOF'
#!/bin/sh
# sdserve launcher: the bundled libraries come first (patchelf was not available at packaging).
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/../libexec/sdserve" "$@"
EOF
  launcher=wrapper
fi
chmod 0755 "$root/bin/sdserve"

# Versions the bootstrap must install for a CUDA build (read from the toolkit it was built with).
cudnn_version="" cublas_version="" cuda_version=""
if [[ $flavour == cuda ]]; then
  cudnn_so=$(ldd "$bin" | awk '/libcudnn\.so/ {print $3}')
  cuda_root=$(dirname "$(dirname "$(readlink -f "$cudnn_so")")")
  hdr() { grep -h -m1 "#define $1 " "$cuda_root"/include/"$2" 2>/dev/null | awk '{print $3}'; }
  cudnn_version="$(hdr CUDNN_MAJOR cudnn_version.h).$(hdr CUDNN_MINOR cudnn_version.h).$(hdr CUDNN_PATCHLEVEL cudnn_version.h)"
  cublas_version="$(hdr CUBLAS_VER_MAJOR cublas_api.h).$(hdr CUBLAS_VER_MINOR cublas_api.h).$(hdr CUBLAS_VER_PATCH cublas_api.h)"
  cuda_version=$(hdr CUDART_VERSION cuda_runtime_api.h)
  cuda_version="$((cuda_version / 1000)).$((cuda_version % 1000 / 10))"
fi
glibc=$(ldd --version | awk 'NR==1 {print $NF}')
{
  echo "VERSION=$version"
  echo "FLAVOUR=$flavour"
  echo "BUILT_ON=$(. /etc/os-release && echo "$ID-$VERSION_ID")"
  echo "GLIBC_MIN=$glibc"
  echo "LAUNCHER=$launcher"
  echo "CUDA_VERSION=$cuda_version"
  echo "CUDNN_VERSION=$cudnn_version"
  echo "CUBLAS_VERSION=$cublas_version"
  echo "REQUIRED_SONAMES=${required[*]}"
  echo "GIT_COMMIT=$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"
} > "$root/share/sdserve/BUILDINFO"

cp "$here"/deploy/aws/instance/* "$root/share/sdserve/aws/"
cp "$here/deploy/aws/bootstrap.sh" "$root/share/sdserve/aws/bootstrap.sh"
chmod 0755 "$root"/share/sdserve/aws/*.sh
[[ -f "$here/LICENSE" ]] && cp "$here/LICENSE" "$root/LICENSE"
{
  echo "sdserve $version bundles these shared libraries (lib/); their licences follow."
  for b in "${bundled[@]}"; do
    soname=${b%%:*} path=${b#*:}
    pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -1 | cut -d: -f1 || true)
    [[ -z $pkg ]] && pkg=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1 || true)
    echo
    echo "==== $soname (Debian package: ${pkg:-unknown})"
    if [[ -n $pkg && -f /usr/share/doc/$pkg/copyright ]]; then
      cat "/usr/share/doc/$pkg/copyright"
    fi
  done
} > "$root/NOTICES"

epoch=${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || echo 0)}
mkdir -p "$out_dir"
tarball="$out_dir/$name.tar.gz"
tar -C "$stage" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf - "$name" | gzip -n -6 > "$tarball"
(cd "$out_dir" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "package: $tarball ($(du -h "$tarball" | cut -f1), $flavour, ${#bundled[@]} bundled libraries, $launcher)" >&2
echo "$tarball"
