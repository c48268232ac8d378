#!/usr/bin/env bash
# MVP against QC and MVP with λ = 0 on one task: S seeds each, P runs at a time, then a table
# and learning curves.
#
#   experiments/ogbench/run.sh CONFIG [SEEDS=3] [PARALLEL=2] [extra --set args...]
#
# CONFIG is a task config (e.g. configs/cpu/cube-double-task2.toml); the methods differ only in
# the actor: MVP (kind = "mvp", λ = 1), QC (kind = "flow", K = 10 Euler steps) and MVP λ = 0;
# everything else (networks, N = 32, h = 5, data, schedule) comes from CONFIG. The results
# (results.csv, summary.md, curves.csv, learning curves against steps and seconds, the resolved
# configs and the commit) go to experiments/results/<config name>/; experiments/run-grid.sh runs
# them.
set -euo pipefail
cd "$(dirname "$0")/../.."
config=${1:?usage: experiments/ogbench/run.sh CONFIG [SEEDS] [PARALLEL] [--set ...]}
seeds=${2:-3}
parallel=${3:-2}
shift $(( $# < 3 ? $# : 3 ))
EXTRA="${EXTRA:-} $*" exec experiments/run-grid.sh "$config" "experiments/results/$(basename "$config" .toml)" "$seeds" "$parallel" \
  'mvp|--set agent.actor.kind="mvp" --set agent.actor.ivc_weight=1.0' \
  'qc|--set agent.actor.kind="flow" --set agent.actor.steps=10' \
  'mvp-lambda0|--set agent.actor.kind="mvp" --set agent.actor.ivc_weight=0.0'
