#!/usr/bin/env bash
# Effect of selection (N = 1 vs 32) and of IVC (λ = 0 vs 1) on the native task, with the
# quickstart config (configs/native-quick.toml). Usage: experiments/native-ablation/run.sh [SEEDS]
# Writes results.csv next to this script: variant, seed, final success rate, wall seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=${1:-2}
out=experiments/native-ablation/results.csv
tmp=$(mktemp -d)
echo "variant,seed,success_rate,seconds" > "$out"
for variant in "mvp N=32:agent.num_samples=32" "mvp N=1:agent.num_samples=1" "mvp λ=0 N=32:agent.actor.ivc_weight=0.0"; do
  name=${variant%%:*}; set_arg=${variant#*:}
  for seed in $(seq 0 $((seeds - 1))); do
    start=$(date +%s)
    line=$(OMP_NUM_THREADS=1 target/release/mvp --log warn train --config configs/native-quick.toml \
      --set "$set_arg" --set run.seed=$seed --set "run.out_dir=\"$tmp\"" | grep "success rate")
    rate=$(echo "$line" | sed 's/.*success rate \([0-9.]*\).*/\1/')
    echo "$name,$seed,$rate,$(( $(date +%s) - start ))" | tee -a "$out"
  done
done
rm -rf "$tmp"
