#!/usr/bin/env bash
# MP1's comparison on Meta-World (low-dimensional state), one task per call: MP1 (the MVP actor
# with MP1's loss: CFG-folded tangent ω = 2, half r = t, adaptive weighting p = 0.5, dispersive
# loss 0.5 on the first hidden layer, no IVC), MP1 without the dispersive loss, flow (K = 10) and
# diffusion (K = 10), all by imitation (agent.imitation) from the same 10 scripted
# demonstrations, acting with a moving average of the weights (decay 0.995), 2×256, batch 64,
# h = 4, 5,000 steps, evaluated at 2,500 and 5,000 steps over 50 episodes; S seeds, P at a time.
#
#   experiments/mp1/run.sh TASK [SEEDS=3] [PARALLEL=2]      e.g. TASK=door-open-v3
#
# Results per task in experiments/mp1/<task>/ (run-grid.sh: report, curves, configs, commit);
# experiments/mp1/table.py gathers them.
set -euo pipefail
cd "$(dirname "$0")/../.."
task=${1:?usage: experiments/mp1/run.sh TASK [SEEDS] [PARALLEL]}
seeds=${2:-3}
parallel=${3:-2}
data="data/metaworld-$task-10.hdf5"
export EXTRA="--set env.name=\"metaworld/$task\" --set data.path=\"$data\" --set agent.actor_ema=0.995 --set schedule.eval_interval=2500"
mp1='--set agent.actor.ivc_weight=0.0 --set agent.actor.one_step_fraction=0.0 --set agent.actor.equal_time_fraction=0.5 --set agent.actor.adaptive_p=0.5 --set agent.actor.cfg_omega=2.0'
exec experiments/run-grid.sh configs/cpu/metaworld-door-open.toml "experiments/mp1/$task" "$seeds" "$parallel" \
  "mp1|$mp1 --set agent.actor.dispersive_weight=0.5" \
  "mp1-no-dispersive|$mp1" \
  'flow|--set agent.actor.kind="flow" --set agent.actor.steps=10' \
  'diffusion|--set agent.actor.kind="diffusion" --set agent.actor.steps=10'
