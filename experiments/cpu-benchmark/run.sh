#!/usr/bin/env bash
# The CPU results table: MVP (λ = 1), QC (flow, K = 10, N = 32), MVP λ = 0 and MVP without
# selection (N = 1) on one task config, at equal steps, S seeds each, P runs at a time.
#
#   experiments/cpu-benchmark/run.sh CONFIG [SEEDS=3] [PARALLEL=2]
#
# Results (table, per-run CSV, curves against steps and wall-clock seconds, configs, commit) go
# to experiments/cpu-benchmark/<config name>/; METHODS="mvp qc" runs a subset.
set -euo pipefail
cd "$(dirname "$0")/../.."
config=${1:?usage: experiments/cpu-benchmark/run.sh CONFIG [SEEDS] [PARALLEL]}
seeds=${2:-3}
parallel=${3:-2}
declare -A sets=(
  [mvp]='--set agent.actor.kind="mvp" --set agent.actor.ivc_weight=1.0'
  [qc]='--set agent.actor.kind="flow" --set agent.actor.steps=10'
  [mvp-lambda0]='--set agent.actor.kind="mvp" --set agent.actor.ivc_weight=0.0'
  [mvp-n1]='--set agent.actor.kind="mvp" --set agent.num_samples=1 --set agent.offline_num_samples=1'
)
variants=()
for m in ${METHODS:-mvp qc mvp-lambda0 mvp-n1}; do
  [[ -n "${sets[$m]:-}" ]] || { echo "unknown method $m: expected one of ${!sets[*]}" >&2; exit 2; }
  variants+=("$m|${sets[$m]}")
done
exec experiments/run-grid.sh "$config" "experiments/cpu-benchmark/$(basename "$config" .toml)" "$seeds" "$parallel" "${variants[@]}"
