#!/usr/bin/env bash
# Runs named variants of one config for several seeds, P at a time, then `mvp report`.
#
#   experiments/run-grid.sh CONFIG RESULTS SEEDS PARALLEL 'name|--set k=v ...' ['name|...' ...]
#
# Each variant is a name and the `--set` overrides that make it; every variant runs with seeds
# 0..SEEDS-1, one libtorch thread each. Runs go to runs/grid/<RESULTS path>/ (ignored by git).
# RESULTS/runs/<run>/ keeps what the report needs of each finished run, small enough for git:
# its config and the evaluation records of its metrics.jsonl (with the first and last record,
# for the wall time). A run found there is done and not repeated, so results from earlier
# sessions and new runs form one report. The report (results.csv, summary.md, curves.csv,
# learning_curves.png, learning_curves_wallclock.png) and the commit go to RESULTS; each run's
# resolved config is in RESULTS/runs/<run>/config.toml. EXTRA (environment) adds overrides to
# every run. Under experiments/EXP/, the kept runs live packed in experiments/EXP/runs.tar.xz (the
# unpacked runs/ folders are ignored by git): the grid unpacks it first (experiments/unpack.sh),
# so earlier runs count as done, and packs the kept runs again at the end (experiments/pack.sh).
#
# FORK=PARENT:STEP (environment) makes each run continue the same seed's run of variant PARENT
# (in the same RESULTS) from its checkpoint at STEP, with the variant's overrides
# (`mvp train --resume`), instead of starting anew: a shared part such as the offline phase is
# trained once. The fork copies the parent's config and metric rows up to STEP (not its
# TensorBoard file); its wall times count from the parent's start.
# MVP_BIN (environment) runs that binary (e.g. a copy of target/release/mvp made before further
# development in this checkout) instead of building, and COMMIT names the commit it was built
# from for commit.txt (default: HEAD when the grid starts).
# The body is one function, read whole before it runs: editing this file while a grid runs
# cannot change what the running grid does.
main() {
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
  exp=
  if [[ $results == experiments/*/* ]]; then
    exp=${results#experiments/}; exp=${exp%%/*}
    if [[ -f experiments/$exp/runs.tar.xz ]]; then experiments/unpack.sh "$exp" | grep -v "^  "; fi
  fi
  commit=${COMMIT:-$(git rev-parse HEAD)}
  if [[ -n "${MVP_BIN:-}" ]]; then
    mvp=$MVP_BIN
  else
    make --no-print-directory build >/dev/null
    mvp=target/release/mvp
  fi

  # The dataset is made once, before the runs start in parallel.
  $mvp --log warn train --config "$config" "${extra[@]}" --set schedule.stop_after=1 \
    --set "run.out_dir=\"$runs/.prepare\"" >/dev/null
  rm -rf "$runs/.prepare"

  # fork PARENT_RUN STEP NEW_RUN: a run directory holding PARENT_RUN's checkpoint at STEP as its
  # latest, its config and its metric rows up to STEP.
  fork() {
    local parent=$1 step=$2 dst=$3 ckpt
    ckpt=$(printf 'step_%010d' "$step")
    if [[ ! -d "$parent/checkpoints/$ckpt" ]]; then
      echo "$(basename "$dst"): FAILED (no checkpoint $parent/checkpoints/$ckpt to fork)"; return 1
    fi
    mkdir -p "$dst/checkpoints"
    cp "$parent/config.toml" "$parent/run.json" "$dst/"
    cp -r "$parent/checkpoints/$ckpt" "$dst/checkpoints/"
    echo "$ckpt" > "$dst/checkpoints/latest"
    awk -F, -v s="$step" 'NR == 1 || $1 <= s' "$parent/metrics.csv" > "$dst/metrics.csv"
    awk -v s="$step" 'match($0, /"step": ?[0-9]+/) {
      v = substr($0, RSTART, RLENGTH); gsub(/[^0-9]/, "", v); if (v + 0 <= s) print }' "$parent/metrics.jsonl" > "$dst/metrics.jsonl"
  }

  # keep RUN_DIR KEPT_DIR: the run's config and the records of its metrics.jsonl that the report
  # reads (evaluations, and the first and last record for the wall time).
  keep() {
    mkdir -p "$2"
    cp "$1/config.toml" "$2/"
    awk 'NR == 1 || /"eval\// { print; printed = NR } { last = $0; n = NR } END { if (n != printed && n > 1) print last }' \
      "$1/metrics.jsonl" > "$2/metrics.jsonl"
  }

  run_one() {
    local name=${1%%|*} sets=${1#*|} seed=$2
    local run=${name}__seed$seed
    if [[ -f "$results/runs/$run/metrics.jsonl" ]]; then
      echo "$run: done before, kept"; return
    fi
    rm -rf "${runs:?}/$run"
    local cmd
    if [[ -n "${FORK:-}" ]]; then
      fork "$runs/${FORK%%:*}__seed$seed" "${FORK#*:}" "$runs/$run" || return
      # shellcheck disable=SC2206
      cmd=(train --resume "$runs/$run" "${extra[@]}" $sets)
    else
      # shellcheck disable=SC2206
      cmd=(train --config "$config" "${extra[@]}" $sets --set run.seed="$seed" --set "run.out_dir=\"$runs\""
        --set "run.name=\"$run\"" --set schedule.save_buffer=false)
    fi
    if OMP_NUM_THREADS=1 $mvp --log warn "${cmd[@]}" > "$runs/$run.log" 2>&1; then
      echo "$run: $(grep 'success rate' "$runs/$run.log" | tail -1)"
      keep "$runs/$run" "$results/runs/$run"
      # A fork's wall times count from its parent's start, in another process: say so.
      if [[ -n "${FORK:-}" ]]; then
        echo "continues ${FORK%%:*}__seed$seed from its checkpoint at step ${FORK#*:}" > "$results/runs/$run/fork.txt"
      fi
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

  $mvp report --runs "$results/runs" --out "$results" --title "$(basename "$results"): evaluation success (mean over $seeds seeds)"
  echo "$commit" > "$results/commit.txt"
  if [[ -n $exp ]]; then experiments/pack.sh "$exp"; fi
}
main "$@"; exit
