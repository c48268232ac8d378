#!/usr/bin/env bash
# Installs the system HDF5 library (Debian package libhdf5-dev) that the robomimic reader of
# crates/replay links through the hdf5-metno crate.
#
#   scripts/setup-hdf5.sh     apt-get install libhdf5-dev (a few MB; needs root, as our machines run)
#
# Idempotent: prints one line and exits when the library and its headers are already present.
set -euo pipefail

present() {
  # pkg-config knows the serial build as `hdf5` (Debian's hdf5-serial.pc) on most releases;
  # fall back to the header file the Debian package installs.
  pkg-config --exists hdf5 2>/dev/null || pkg-config --exists hdf5-serial 2>/dev/null \
    || [[ -f /usr/include/hdf5/serial/hdf5.h ]] || [[ -f /usr/include/hdf5.h ]]
}

if present && dpkg -s libhdf5-dev >/dev/null 2>&1; then
  echo "libhdf5-dev already installed ($(dpkg-query -W -f='${Version}' libhdf5-dev))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: libhdf5-dev is missing and apt-get is not available; install the HDF5 1.10+ development files with your package manager" >&2
  exit 1
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: installing libhdf5-dev needs root; run: apt-get install -y libhdf5-dev pkg-config" >&2
    exit 1
  fi
fi
echo "installing libhdf5-dev with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends libhdf5-dev pkg-config >/dev/null 2>&1; then
  # A fresh machine may have empty package lists.
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends libhdf5-dev pkg-config >/dev/null
fi
echo "libhdf5-dev installed ($(dpkg-query -W -f='${Version}' libhdf5-dev))"
