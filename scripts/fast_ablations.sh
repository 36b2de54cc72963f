#!/usr/bin/env bash
# The measurements of docs/fast.md on real CIFAR-10 (conv4, linear protocol, seeds 1-3), run one after another
# (never two at once: the times are part of the result). Usage:
#   scripts/fast_ablations.sh DATASET OUT finals     # fast preset vs paper preset (K=16, 4 epochs), curves
#   scripts/fast_ablations.sh DATASET OUT ablations  # each fast choice against the paper's, short budget
# Then: ssrr report OUT/finals --curves docs/fast.png ; ssrr report OUT/ablations --final
set -euo pipefail
DATASET=${1:?shard folder}; OUT=${2:?output folder}; WHAT=${3:?finals or ablations}
SEEDS=${SEEDS:-"1 2 3"}
run() {  # run GROUP NAME ARGS...: one pretraining run per seed, skipped when it already finished
  local group=$1 name=$2; shift 2
  for seed in $SEEDS; do
    [ -f "$OUT/$group/$name-s$seed/throughput.json" ] && continue
    rm -rf "$OUT/$group/$name-s$seed"
    ssrr pretrain --dataset "$DATASET" --backbone conv4 --seed "$seed" --out "$OUT/$group" --name "$name-s$seed" \
      --quiet "$@"
  done
}
case $WHAT in
  finals)
    run finals fast --preset fast --eval-every 8
    run finals paper-k16 --amp --k 16 --epochs 4 --eval-every 1
    ;;
  ablations)  # 4 epochs of the fast preset (about 2 minutes) and one change at a time
    E=4
    run ablations fast --preset fast --epochs $E --eval-every $E
    run ablations constant-lr --preset fast --epochs $E --eval-every $E --lr-schedule constant --warmup-epochs 0 --lr 1e-3
    run ablations lr1e-3 --preset fast --epochs $E --eval-every $E --lr 1e-3
    run ablations m64 --preset fast --epochs $E --eval-every $E --batch 64
    run ablations k8-same-time --preset fast --epochs $((E / 2)) --eval-every $((E / 2)) --k 8
    ;;
  *) echo "unknown: $WHAT (finals or ablations)" >&2; exit 2 ;;
esac
