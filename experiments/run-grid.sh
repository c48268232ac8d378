#!/usr/bin/env bash
# Runs named variants of one config for several seeds, P at a time, then `mvp report`.
#
#   experiments/run-grid.sh CONFIG RESULTS SEEDS PARALLEL 'name|--set k=v ...' ['name|...' ...]
#
# Each variant is a name and the `--set` overrides that make it; every variant runs with seeds
# 0..SEEDS-1, one libtorch thread each. Runs go to runs/grid/<RESULTS path>/ (ignored by git)
# and resume or are kept when done before; the report (results.csv, summary.md, curves.csv,
# learning_curves.png, learning_curves_wallclock.png), each variant's resolved config and the
# commit go to RESULTS. EXTRA (environment) adds overrides to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: experiments/run-grid.sh CONFIG RESULTS SEEDS PARALLEL VARIANT...}
results=${2:?RESULTS folder}
seeds=${3:?SEEDS}
parallel=${4:?PARALLEL}
shift 4
variants=("$@")
read -r -a extra <<< "${EXTRA:-}"
runs=runs/grid/${results#experiments/}
mkdir -p "$runs" "$results"
make --no-print-directory build >/dev/null
mvp=target/release/mvp

# The dataset is made once, before the runs start in parallel.
$mvp --log warn train --config "$config" "${extra[@]}" --set schedule.stop_after=1 \
  --set "run.out_dir=\"$runs/.prepare\"" >/dev/null
rm -rf "$runs/.prepare"

run_one() {
  local name=${1%%|*} sets=${1#*|} seed=$2
  local run=${name}__seed$seed
  if [[ -f "$runs/$run/checkpoints/latest" ]] && grep -q "success rate" "$runs/$run.log" 2>/dev/null; then
    echo "$run: done before, kept"; return
  fi
  rm -rf "${runs:?}/$run"
  # shellcheck disable=SC2086
  if OMP_NUM_THREADS=1 $mvp --log warn train --config "$config" "${extra[@]}" $sets --set run.seed="$seed" \
    --set "run.out_dir=\"$runs\"" --set "run.name=\"$run\"" --set schedule.save_buffer=false \
    > "$runs/$run.log" 2>&1; then
    echo "$run: $(grep 'success rate' "$runs/$run.log" | tail -1)"
  else
    echo "$run: FAILED (see $runs/$run.log)"
  fi
}
running=0
for seed in $(seq 0 $((seeds - 1))); do
  for v in "${variants[@]}"; do
    run_one "$v" "$seed" &
    running=$((running + 1))
    if (( running >= parallel )); then wait -n || true; running=$((running - 1)); fi
  done
done
wait

$mvp report --runs "$runs" --out "$results" --title "$(basename "$results"): evaluation success (mean over $seeds seeds)"
for v in "${variants[@]}"; do
  name=${v%%|*}
  [[ -f "$runs/${name}__seed0/config.toml" ]] && cp "$runs/${name}__seed0/config.toml" "$results/config-$name.toml"
done
git rev-parse HEAD > "$results/commit.txt"
