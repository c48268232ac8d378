#!/usr/bin/env bash
# Installs libtorch 2.13.0 (the version tch 0.26.0 requires) into .libtorch/ from PyPI wheels.
#
#   scripts/setup-libtorch.sh            CPU build (default): ~530 MB download, ~20 s
#   MVP_CUDA=1 scripts/setup-libtorch.sh CUDA build: keeps libtorch_cuda and installs the
#                                        nvidia wheels torch 2.13.0 names (~3 GB)
#
# Idempotent: does nothing when .libtorch/ already holds the requested variant.
# Why PyPI: download.pytorch.org is not reachable from our machines; PyPI's Linux x86_64
# torch 2.13.0 wheel is the CUDA build (+cu130) and carries the libtorch shared libraries.
set -euo pipefail

TORCH_VERSION=2.13.0
CUDART=nvidia-cuda-runtime==13.0.96
CUPTI=nvidia-cuda-cupti==13.0.85
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.libtorch"
VARIANT=cpu
if [[ "${MVP_CUDA:-0}" != "0" ]]; then VARIANT=cuda; fi
PYTHON="${PYTHON:-python3}"

marker="$DEST/variant"
if [[ -f "$marker" && "$(cat "$marker")" == "$TORCH_VERSION $VARIANT" \
      && -f "$DEST/torch/lib/libtorch_cpu.so" ]]; then
  echo "libtorch $TORCH_VERSION ($VARIANT) already installed in .libtorch"
  exit 0
fi

echo "installing libtorch $TORCH_VERSION ($VARIANT) into .libtorch from PyPI wheels"
rm -rf "$DEST"
mkdir -p "$DEST/wheels"
# With --platform, pip takes exactly the tags it is given (it does not add the older glibc
# versions a newer one implies), so name every manylinux tag from glibc 2.17 to 2.28: the nvidia
# wheels torch names use several (cudnn 9.20 is manylinux_2_27 only).
PLATFORMS=(--platform manylinux2014_x86_64)
for minor in $(seq 17 28); do PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done
pip_download() {
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 "${PLATFORMS[@]}" -d "$DEST/wheels" "$@"
}
if [[ "$VARIANT" == cpu ]]; then
  pip_download --no-deps "torch==$TORCH_VERSION" "$CUDART" "$CUPTI"
else
  # With dependencies: pulls every nvidia-* wheel the torch metadata names (cudnn, cublas, ...).
  pip_download "torch==$TORCH_VERSION"
fi

# Extract torch/lib + torch/include + torch/version.py and every nvidia/ tree. libtorch_cpu finds
# libcudart/libcupti through its RPATH $ORIGIN/../../nvidia/..., so nvidia/ sits beside torch/.
"$PYTHON" - "$DEST" "$VARIANT" <<'PY'
import pathlib, sys, zipfile
dest, variant = pathlib.Path(sys.argv[1]), sys.argv[2]
# Libraries only the CUDA build needs; the CPU variant leaves them out (~520 MB).
cuda_only = {"libtorch_cuda.so", "libtorch_cuda_linalg.so", "libc10_cuda.so",
             "libtorch_nvshmem.so", "libcaffe2_nvrtc.so", "libtorch_python.so", "libtorch.so"}
for whl in sorted((dest / "wheels").glob("*.whl")):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            n = info.filename
            if whl.name.startswith("torch-"):
                keep = n.startswith(("torch/lib/", "torch/include/")) or n == "torch/version.py"
                if variant == "cpu" and n.startswith("torch/lib/") and n.rsplit("/", 1)[-1] in cuda_only:
                    keep = False
            else:
                keep = n.startswith("nvidia/")
            if keep:
                z.extract(info, dest)
PY
rm -rf "$DEST/wheels"

if [[ "$VARIANT" == cpu ]]; then
  # The wheel's libtorch.so is an empty shim whose only job is to pull in libtorch_cpu and
  # libtorch_cuda; tch links -ltorch, so the CPU variant gets an empty shim of its own.
  echo "" | ${CC:-cc} -shared -x c - -o "$DEST/torch/lib/libtorch.so"
fi

# tch's build script reads LIBTORCH/build-version and refuses a mismatched version.
version=$(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$DEST/torch/version.py")
if [[ "${version%%+*}" != "$TORCH_VERSION" ]]; then
  echo "error: installed torch version is '$version', expected $TORCH_VERSION" >&2
  exit 1
fi
echo "$version" > "$DEST/torch/build-version"
echo "$TORCH_VERSION $VARIANT" > "$marker"
echo "libtorch $version ($VARIANT) installed in .libtorch ($(du -sh "$DEST" | cut -f1))"
