#!/usr/bin/env bash
# Packs the raw kept runs of one experiment into experiments/EXP/runs.tar.xz (the archive that
# experiments/unpack.sh unpacks; run-grid.sh calls both): every file under a runs/ folder (and the
# older runs-whole-chunks/ folder) of experiments/EXP/, and experiments/results/<run>/metrics.csv,
# the same files .gitignore ignores. Unpacks the archive first, so runs packed before stay in it.
# Reproducible: the same files give the same archive.
#
#   experiments/pack.sh EXP         # e.g. cpu-benchmark
set -euo pipefail
cd "$(dirname "$0")"
exp=${1:?usage: experiments/pack.sh EXP}
exp=${exp%/}; exp=${exp#experiments/}
[[ -d "$exp" && $exp != */* ]] || { echo "no experiment folder experiments/$exp" >&2; exit 1; }
[[ -f "$exp/runs.tar.xz" ]] && ./unpack.sh "$exp" > /dev/null

list=$(cd "$exp" && find . -type f \( -path '*/runs/*' -o -path '*/runs-whole-chunks/*' \
  -o \( -path './*/metrics.csv' ! -path './*/*/*' \) \) | sed 's#^\./##' | LC_ALL=C sort)
if [[ $exp != results ]]; then  # a run's metrics.csv is packed in results/ only
  list=$(grep -E '/(runs|runs-whole-chunks)/' <<< "$list" || true)
fi
[[ -n $list ]] || { echo "experiments/$exp: no raw run files to pack"; exit 0; }
tmp=$(mktemp "$exp/.runs.tar.xz.XXXXXX")
trap 'rm -f "$tmp"' EXIT
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2026-01-01 00:00:00Z' \
  -C "$exp" -cJf "$tmp" -T - <<< "$list"
chmod 644 "$tmp"
mv "$tmp" "$exp/runs.tar.xz"
trap - EXIT
echo "experiments/$exp/runs.tar.xz: $(wc -l <<< "$list") files, $(stat -c %s "$exp/runs.tar.xz") bytes"
