#!/usr/bin/env bash
# A full disk, again, after the soak found it aborting the run: a short native run
# (configs/native-quick.toml, 10,000 steps, checkpoints every 500) on a 64 MB tmpfs, the tmpfs
# filled after its first checkpoint, the run's exit status and last words recorded, the filler removed, the run
# resumed to its end and audited. Needs root (mount). Output: experiments/soak/disk-full.txt.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=experiments/soak/disk-full.txt
MNT=/mnt/mvp-full
mkdir -p "$MNT"
mountpoint -q "$MNT" || mount -t tmpfs -o size=64m tmpfs "$MNT"
rm -rf "${MNT:?}"/*
MVP=target/release/mvp
$MVP train --config configs/native-quick.toml --set run.out_dir=\"$MNT\" --set run.name=\"full\" \
    --set schedule.offline_steps=2000 --set schedule.online_steps=8000 --set schedule.checkpoint_interval=500 \
    >"$MNT.log" 2>&1 &
PID=$!
# Filled once the first checkpoint is written, so there is something to resume from.
until compgen -G "$MNT/full/checkpoints/step_*" >/dev/null || ! kill -0 $PID 2>/dev/null; do sleep 0.5; done
dd if=/dev/zero of="$MNT/filler" bs=1M 2>/dev/null
wait $PID
status=$?
{
    echo "run on a 64 MB tmpfs, filled after its first checkpoint: exit status $status; its last lines:"
    grep -v "clock: step" "$MNT.log" | tail -3
    rm -f "$MNT/filler"
    echo
    echo "filler removed; mvp train --resume:"
    $MVP train --resume "$MNT/full" >"$MNT.resume.log" 2>&1
    echo "exit status $?; $(grep -c . "$MNT/full/metrics.jsonl") metric rows"
    $MVP audit "$MNT/full"
} >"$OUT" 2>&1
cat "$OUT"
