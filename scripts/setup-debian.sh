#!/usr/bin/env bash
# Installs the Debian packages mvp needs from the system:
#   libhdf5-dev, pkg-config   the HDF5 library the robomimic reader of crates/replay links
#                             (through the hdf5-metno crate)
#   libegl1, libegl-mesa0,    EGL with Mesa's software renderer, for offscreen MuJoCo rendering
#   libgl1-mesa-dri           (videos: `mvp eval --video`, `schedule.video_episodes`)
#
#   scripts/setup-debian.sh   apt-get install of the missing ones (needs root, as our machines run)
#
# Idempotent: prints one line and exits when every package is installed.
set -euo pipefail

packages=(libhdf5-dev pkg-config libegl1 libegl-mesa0 libgl1-mesa-dri)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [[ ${#missing[@]} == 0 ]]; then
  echo "Debian packages present: ${packages[*]}"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing ${missing[*]} and apt-get is not available; install HDF5 1.10+ development files and EGL (Mesa) with your package manager" >&2
  exit 1
fi
SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "error: installing ${missing[*]} needs root; run: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
echo "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  # A fresh machine may have empty package lists.
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "installed ${missing[*]}"
