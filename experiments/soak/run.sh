#!/usr/bin/env bash
# A soak under faults: the main job (robomimic lift) stretched to 30,000 online steps, run twice
# at once from the same seed. The reference run is left alone; the disturbed run lives on a
# small tmpfs and meets, while it trains:
#   - its training environment worker killed with SIGKILL every 4 minutes (an evaluation
#     worker instead at the third kill),
#   - Ctrl-C (SIGINT) at 8 and at 24 minutes, each followed by `mvp train --resume`,
#   - a full disk at 15 minutes (a filler file takes the tmpfs), then the filler removed and
#     the run resumed.
# Then `mvp audit` checks both run directories (every online step stored once, no transition
# joining two episodes, metrics without a duplicate or missing step) and the two learning
# curves are put side by side. Needs root (mount) and `make setup`; about 40 minutes on two
# cores. Events go to experiments/soak/events.log with their times.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=experiments/soak
MVP=runs/soak/mvp   # a copy: rebuilding target/ meanwhile must not change the runs' binary
CONFIG=configs/cpu/robomimic-lift.toml
TMPFS=/mnt/mvp-soak
REF=runs/soak/reference
SETS=(--set schedule.online_steps=30000 --set schedule.save_buffer=true --set schedule.checkpoint_interval=2500)
EVENTS=$OUT/events.log

cargo build --release -p mvp-cli >/dev/null
mkdir -p "$OUT" runs/soak "$TMPFS"
cp target/release/mvp "$MVP"
mountpoint -q "$TMPFS" || mount -t tmpfs -o size=256m tmpfs "$TMPFS"
rm -rf "$TMPFS"/* "$REF"
: >"$EVENTS"
T0=$(date +%s)
log() { echo "$(($(date +%s) - T0)) s: $*" | tee -a "$EVENTS"; }

$MVP train --config $CONFIG "${SETS[@]}" --set run.out_dir=\"runs/soak\" --set run.name=\"reference\" \
    >"$OUT/reference.log" 2>&1 &
REF_PID=$!
log "reference run started (pid $REF_PID)"

DIS=$TMPFS/disturbed
start_disturbed() {
    if [ -d "$DIS" ]; then
        $MVP train --resume "$DIS" >>"$OUT/disturbed.log" 2>&1 &
    else
        $MVP train --config $CONFIG "${SETS[@]}" --set run.out_dir=\"$TMPFS\" --set run.name=\"disturbed\" \
            >>"$OUT/disturbed.log" 2>&1 &
    fi
    DIS_PID=$!
    log "disturbed run started (pid $DIS_PID)"
}
alive() { kill -0 "$DIS_PID" 2>/dev/null; }
# The env workers of the disturbed trainer, the busiest first (the training worker steps all
# the time; evaluation workers only during evaluations).
workers() { ps --ppid "$DIS_PID" -o pid=,cputimes=,args= | grep mvp_envs.worker | sort -k2 -n -r | awk '{print $1}'; }
last_step() { grep -o '"step":[0-9]*' "$DIS/metrics.jsonl" 2>/dev/null | tail -1 | cut -d: -f2; }

start_disturbed
kills=0
next_kill=240
interrupts=(480 1440)
disk_full=900
starts=1
while true; do
    sleep 5
    now=$(($(date +%s) - T0))
    if ! alive; then
        wait "$DIS_PID" && status=0 || status=$?
        log "disturbed run exited with status $status (last logged step $(last_step))"
        [ "$status" -eq 0 ] && break
        if [ -f "$TMPFS/filler" ]; then
            log "disk full: $(df -h "$TMPFS" | tail -1 | awk '{print $3 " of " $2}') used; removing the filler"
            rm -f "$TMPFS/filler"
        fi
        starts=$((starts + 1))
        [ "$starts" -le 10 ] || { log "giving up after 10 starts"; exit 1; }
        start_disturbed
        continue
    fi
    if [ "$now" -ge "$next_kill" ]; then
        kills=$((kills + 1))
        mapfile -t ws < <(workers)
        pick=${ws[0]:-}
        what="training worker"
        if [ "$kills" -eq 3 ] && [ "${#ws[@]}" -gt 1 ]; then pick=${ws[1]}; what="evaluation worker"; fi
        if [ -n "$pick" ]; then
            kill -9 "$pick" && log "kill -9 the $what $pick (step $(last_step))"
        fi
        next_kill=$((next_kill + 240))
    fi
    if [ "${#interrupts[@]}" -gt 0 ] && [ "$now" -ge "${interrupts[0]}" ]; then
        interrupts=("${interrupts[@]:1}")
        kill -INT "$DIS_PID" && log "Ctrl-C (SIGINT) to the disturbed run (step $(last_step))"
    fi
    if [ "$disk_full" -gt 0 ] && [ "$now" -ge "$disk_full" ]; then
        disk_full=0
        dd if=/dev/zero of="$TMPFS/filler" bs=1M 2>/dev/null || true
        log "the disk is full (filler $(du -m "$TMPFS/filler" | cut -f1) MB; step $(last_step))"
    fi
done
log "disturbed run finished"
wait "$REF_PID" && log "reference run finished" || log "reference run exited with status $?"
rm -rf runs/soak/disturbed
cp -r "$DIS" runs/soak/disturbed
cargo build --release -p mvp-cli >/dev/null
for run in reference disturbed; do
    target/release/mvp audit runs/soak/$run >"$OUT/audit-$run.txt" 2>&1 && log "audit $run: sound" || log "audit $run: FAILED"
done
target/release/mvp report --runs runs/soak --out "$OUT" --title "soak: reference vs disturbed" >"$OUT/report.txt" 2>&1 || true
log "done"
