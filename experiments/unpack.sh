#!/usr/bin/env bash
# Unpacks the raw kept runs of the experiments next to their archives: each
# experiments/<exp>/runs.tar.xz holds the files of experiments/<exp>/ that one run wrote (the
# runs' configs and evaluation records in <task>/runs/<run>/, which `mvp report`, table.py and
# run-grid.sh read), with paths relative to experiments/<exp>/. The unpacked files are ignored by
# git (.gitignore); experiments/pack.sh packs them again.
#
#   experiments/unpack.sh           # every experiments/*/runs.tar.xz
#   experiments/unpack.sh EXP       # only experiments/EXP/runs.tar.xz, e.g. cpu-benchmark
#
# Idempotent: a file already there is kept as it is (never overwritten), so a second call
# unpacks nothing and runs added since are left alone.
set -euo pipefail
cd "$(dirname "$0")"

if (( $# > 1 )); then
  echo "usage: experiments/unpack.sh [EXP]" >&2; exit 2
elif (( $# == 1 )); then
  exp=${1%/}; exp=${exp#experiments/}
  [[ -f "$exp/runs.tar.xz" ]] || { echo "no archive experiments/$exp/runs.tar.xz" >&2; exit 1; }
  archives=("$exp/runs.tar.xz")
else
  shopt -s nullglob
  archives=(*/runs.tar.xz)
  (( ${#archives[@]} )) || { echo "no experiments/*/runs.tar.xz to unpack"; exit 0; }
fi

for archive in "${archives[@]}"; do
  dir=$(dirname "$archive")
  missing=()
  while IFS= read -r member; do
    [[ $member == */ || -e "$dir/$member" ]] || missing+=("$member")
  done < <(tar -tJf "$archive")
  if (( ${#missing[@]} == 0 )); then
    echo "experiments/$archive: already unpacked"
    continue
  fi
  printf '%s\n' "${missing[@]}" | tar -xJf "$archive" -C "$dir" --no-same-owner -T -
  echo "experiments/$archive: unpacked ${#missing[@]} files into experiments/$dir/"
  printf '%s\n' "${missing[@]}" | sed -E 's#/[^/]+$##' | sort -u | sed "s#^#  experiments/$dir/#"
done
