#!/usr/bin/env bash
# MVP against QC and MVP with λ = 0 on one task: S seeds each, P runs at a time, then a table
# and learning curves.
#
#   experiments/ogbench/run.sh CONFIG [SEEDS=3] [PARALLEL=2] [extra --set args...]
#
# CONFIG is a task config (e.g. configs/cpu/cube-double-task2.toml); the methods differ only in
# the actor: MVP (kind = "mvp", λ = 1), QC (kind = "flow", K = 10 Euler steps) and MVP λ = 0;
# everything else (networks, N = 32, h = 5, data, schedule) comes from CONFIG.
# Runs go to runs/experiments/<config name>/ (ignored by git); the results (results.csv,
# summary.md, curves.csv, learning_curves.png, the resolved configs and the commit) go to
# experiments/results/<config name>/.
set -euo pipefail
cd "$(dirname "$0")/../.."
config=${1:?usage: experiments/ogbench/run.sh CONFIG [SEEDS] [PARALLEL] [--set ...]}
seeds=${2:-3}
parallel=${3:-2}
shift $(( $# < 3 ? $# : 3 ))
extra=("$@")
name=$(basename "$config" .toml)
runs=runs/experiments/$name
results=experiments/results/$name
mkdir -p "$runs" "$results"
make --no-print-directory build >/dev/null
mvp=target/release/mvp

# The dataset is made once, before the runs start in parallel.
$mvp --log warn train --config "$config" "${extra[@]}" --set schedule.stop_after=1 \
  --set "run.out_dir=\"$runs/.prepare\"" >/dev/null
rm -rf "$runs/.prepare"

jobs=()
for seed in $(seq 0 $((seeds - 1))); do
  jobs+=("mvp__seed$seed|--set agent.actor.kind=\"mvp\" --set agent.actor.ivc_weight=1.0")
  jobs+=("qc__seed$seed|--set agent.actor.kind=\"flow\" --set agent.actor.steps=10")
  jobs+=("mvp-lambda0__seed$seed|--set agent.actor.kind=\"mvp\" --set agent.actor.ivc_weight=0.0")
done
run_one() {
  local run=${1%%|*} sets=${1#*|} seed=${1##*__seed}
  seed=${seed%%|*}
  if [[ -f "$runs/$run/checkpoints/latest" ]]; then echo "$run: done before, kept"; return; fi
  rm -rf "${runs:?}/$run"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 $mvp --log warn train --config "$config" "${extra[@]}" $sets --set run.seed="$seed" \
    --set "run.out_dir=\"$runs\"" --set "run.name=\"$run\"" --set schedule.save_buffer=false \
    > "$runs/$run.log" 2>&1 && echo "$run: $(grep 'success rate' "$runs/$run.log")" || echo "$run: FAILED (see $runs/$run.log)"
}
running=0
for job in "${jobs[@]}"; do
  run_one "$job" &
  running=$((running + 1))
  if (( running >= parallel )); then wait -n || true; running=$((running - 1)); fi
done
wait

$mvp report --runs "$runs" --out "$results" --title "$name: evaluation success (mean over $seeds seeds)"
for m in mvp qc mvp-lambda0; do cp "$runs/${m}__seed0/config.toml" "$results/config-$m.toml"; done
git rev-parse HEAD > "$results/commit.txt"
