#!/usr/bin/env bash
# The AVX2 measurements of experiments/speed/README.md ("Every CPU"): one thread, run from the
# repository root after `cargo build --release`. Add `--isa avx2` to each command to measure
# the AVX2 kernels on an AVX-512 CPU.
set -euo pipefail
cd "$(dirname "$0")/../../.."
B=${MVP_BIN:-target/release/mvp}
out=experiments/speed/avx2
export OMP_NUM_THREADS=1
lscpu | grep -E "Model name|CPU family|^Model:|Flags" > $out/lscpu.txt
$B --log warn bench gemm --rows 32,64,2048 --dim 256 --seconds 2 --json $out/gemm_256.json > $out/gemm_256.md
$B --log warn bench gemm --rows 64,256,2048 --dim 512 --seconds 2 --json $out/gemm_512.json > $out/gemm_512.md
# libtorch and native for every step, every combination, timed in interleaved rounds
$B --log warn bench train --hidden 256,256 --batch 64 --only QC,MVP --select libtorch,native \
  --critic libtorch,native --actor libtorch,native --iters 60 --json $out/train_2x256.json > $out/train_2x256.md
$B --log warn bench train --hidden 256,256,256 --batch 64 --only QC,MVP --select libtorch,native \
  --critic libtorch,native --actor libtorch,native --iters 40 --json $out/train_3x256.json > $out/train_3x256.md
# what `auto` picks (calibrated at these shapes; the log names each decision), on the best
# kernels and with the engine capped to the portable ones
MVP_CACHE_DIR=$(mktemp -d) $B --log info bench train --hidden 256,256 --batch 64 --only QC,MVP \
  --select libtorch,auto --critic libtorch,auto --actor libtorch,auto --iters 30 > $out/train_2x256_auto.md 2> $out/train_2x256_auto.log
MVP_CACHE_DIR=$(mktemp -d) $B --log info bench train --isa portable --hidden 256,256 --batch 64 --only QC,MVP \
  --select libtorch,auto --critic libtorch,auto --actor libtorch,auto --iters 30 > $out/train_2x256_auto_portable.md 2> $out/train_2x256_auto_portable.log
$B --log warn bench latency --hidden 256,256 --only QC,MVP --engines libtorch,native --precisions f32 --calls 2000 \
  --json $out/latency_2x256.json > $out/latency_2x256.md
$B --log warn bench train --batch 256 --only QC,MVP --select libtorch,native --critic libtorch,native \
  --actor libtorch,native --iters 10 --json $out/train_paper.json > $out/train_paper.md
