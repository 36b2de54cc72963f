#!/usr/bin/env bash
# The measurements of docs/fast.md on real CIFAR-10 (conv4, linear protocol, seeds 1-3). Usage:
#   scripts/fast_ablations.sh DATASET OUT finals     # the fast preset on train+val, tested once a seed, one at a time
#   scripts/fast_ablations.sh DATASET OUT paper-reference  # the paper preset (K=16, 4 epochs), one at a time
#   scripts/fast_ablations.sh DATASET OUT ablations  # each fast choice changed back, 6-epoch budget, two at a time
#   scripts/fast_ablations.sh DATASET OUT rates      # the schedule and the peak rate at K=8 x M=32, two at a time
#   scripts/fast_ablations.sh DATASET OUT ablations-v1  # the first preset's choices (schedule, rate, M)
#   scripts/fast_ablations.sh DATASET OUT screens    # seed 1 of the other values tried
#   scripts/fast_ablations.sh DATASET OUT schedule-budget  # cosine against constant at K=8 x M=32 in 15 minutes, alone
#   scripts/fast_ablations.sh DATASET OUT k8-budget  # K=8 x M=32 in the preset's 15 minutes, alone
#   scripts/fast_ablations.sh DATASET OUT resnet32   # the fast preset on ResNet-32, 6 epochs (~28 min), alone
# Then: ssrr report OUT/finals --curves docs/fast.png ; ssrr report OUT/ablations --final
# Finals run alone (their times are the result). Ablations compare accuracy at a fixed number of views, so they
# run two at a time with one thread each (their times are not used). A finished run is skipped on a rerun.
# DATASET needs a validation split (`ssrr shard imagefolder cifar10-jpeg.tar.gz --name cifar10-jpeg --val 5000`):
# every setting is chosen on it (runs train on train, the 45,000 left, and probe val); finals train the chosen
# recipe on train+val (all 50,000) and probe the test split, once per seed.
set -euo pipefail
DATASET=${1:?shard folder}; OUT=${2:?output folder}; WHAT=${3:?finals, paper-reference, ablations, rates, ablations-v1, screens, schedule-budget, k8-budget or resnet32}
SEEDS=${SEEDS:-"1 2 3"}
BACKBONE=conv4
VAL=$(${PYTHON:-python} -c 'import sys; from ssrr.data.formats import load_manifest
print(load_manifest(sys.argv[1]).validation_split or "")' "$DATASET")
if [ -z "$VAL" ]; then
  echo "$DATASET has no validation split to choose settings on: shard it with --val 5000" >&2; exit 2
fi
one() {  # one GROUP NAME SEED ARGS... : chosen on validation (train on train, probe val), finals on train+val/test
  local group=$1 name=$2 seed=$3; shift 3
  [ -f "$OUT/$group/$name-s$seed/throughput.json" ] && return 0
  rm -rf "$OUT/$group/$name-s$seed"
  local splits=(--split train --probe-split "$VAL")
  [ "$group" = finals ] && splits=(--split "train+$VAL" --probe-split test)
  ssrr pretrain --dataset "$DATASET" --backbone "$BACKBONE" --seed "$seed" --out "$OUT/$group" --name "$name-s$seed" \
    "${splits[@]}" --quiet "$@"
}
pair() {  # pair NAME ARGS... : every seed in the background, never more than two runs at once, one thread each
  local name=$1; shift
  for seed in $SEEDS; do
    while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
    OMP_NUM_THREADS=1 one ablations "$name" "$seed" --threads 1 --num-threads 1 "$@" &
  done
}
case $WHAT in
  finals)
    for seed in $SEEDS; do one finals fast "$seed" --preset fast; done
    ;;
  paper-reference)  # the paper's recipe at the reference settings, trained on train, probed on test
    for seed in $SEEDS; do one finals paper-k16 "$seed" --amp --k 16 --epochs 4 --eval-every 1; done
    ;;
  ablations)  # each choice against its alternative at a 6-epoch budget of full-size views (8 of 24-px views)
    E=6
    pair fast --preset fast --epochs $((E * 4 / 3)) --eval-every $((E * 4 / 3))
    pair full-size-views --preset fast --epochs $E --eval-every $E --view-size 32
    pair no-bn-recalibrate --preset fast --epochs $((E * 4 / 3)) --eval-every $((E * 4 / 3)) --no-bn-recalibrate
    pair m128-lr1e-2 --preset fast --epochs $((E * 4 / 3)) --eval-every $((E * 4 / 3)) --batch 128 --lr 1e-2
    # K at the same views per step (K x M = 256), steps and warm-up steps: K=2 for twice the epochs, K=8 for half
    pair k2-m128 --preset fast --epochs $((E * 8 / 3)) --eval-every $((E * 8 / 3)) --k 2 --batch 128 --warmup-epochs 2
    pair k8-m32 --preset fast --epochs $((E * 2 / 3)) --eval-every $((E * 2 / 3)) --k 8 --batch 32 --warmup-epochs 0.5
    wait
    ;;
  rates)  # the schedule and the peak rate at the balance the ablations chose (K=8 x M=32), seeds 1-3, 4 epochs
    E=4
    K8=(--k 8 --batch 32 --warmup-epochs 0.5)
    pair k8-m32-constant-lr --preset fast --epochs $E --eval-every $E "${K8[@]}" --lr-schedule constant --warmup-epochs 0
    pair k8-m32-lr2.5e-3 --preset fast --epochs $E --eval-every $E "${K8[@]}" --lr 2.5e-3
    pair k8-m32-lr1e-2 --preset fast --epochs $E --eval-every $E "${K8[@]}" --lr 1e-2
    wait
    ;;
  ablations-v1)  # the first fast preset's ablations (full-size views, no recalibration): schedule, rate, M
    E=6
    V1=(--view-size 32 --no-bn-recalibrate)
    pair fast-v1 --preset fast --epochs $E --eval-every $E "${V1[@]}"
    pair lr2e-3 --preset fast --epochs $E --eval-every $E --lr 2e-3 "${V1[@]}"
    pair constant-lr --preset fast --epochs $E --eval-every $E --lr-schedule constant --warmup-epochs 0 "${V1[@]}"
    SEEDS=1 pair m256 --preset fast --epochs $E --eval-every $E --batch 256 "${V1[@]}"
    wait
    ;;
  screens)  # seed 1 only: the other values tried for K, the learning rate and the crop (same 6-epoch budget)
    E=6
    SEEDS=1
    V1=(--view-size 32 --no-bn-recalibrate)  # the first preset's screens (K, rate, crop) used full-size views
    pair k2-m256-same-views --preset fast --epochs $((E * 2)) --eval-every $((E * 2)) --k 2 --batch 256 "${V1[@]}"
    pair k3-same-views --preset fast --epochs $((E * 4 / 3)) --eval-every $((E * 4 / 3)) --k 3 "${V1[@]}"
    pair k8-same-views-lr2e-3 --preset fast --epochs $((E / 2)) --eval-every $((E / 2)) --k 8 --lr 2e-3 "${V1[@]}"
    pair lr5e-3 --preset fast --epochs $E --eval-every $E --lr 5e-3 "${V1[@]}"
    pair lr2e-2 --preset fast --epochs $E --eval-every $E --lr 2e-2 "${V1[@]}"
    pair crop25-lr2e-3 --preset fast --epochs $E --eval-every $E --crop-min 0.25 --lr 2e-3 "${V1[@]}"
    # the view side at about the same time as 6 full-size epochs: 20 px for 12 epochs; ramps 20->32 and 24->32
    pair view20 --preset fast --epochs $((E * 2)) --eval-every $((E * 2)) --view-size 20 --no-bn-recalibrate
    pair ramp20-32 --preset fast --epochs 8 --eval-every 8 --view-size 20 --view-size-end 32 --no-bn-recalibrate
    pair ramp24-32 --preset fast --epochs 7 --eval-every 7 --view-size 24 --view-size-end 32 --no-bn-recalibrate
    # M with 24-px views and the recalibration, seeds 1 and 2 (the ablation's budget of 8 epochs)
    SEEDS="1 2" pair m32-lr1e-2 --preset fast --epochs 8 --eval-every 8 --batch 32 --lr 1e-2
    SEEDS="1 2" pair m64-lr1e-2 --preset fast --epochs 8 --eval-every 8 --lr 1e-2
    wait
    ;;
  schedule-budget)  # the two schedules at K=8 x M=32 in the preset's 15 minutes, seed 1, alone, probed at the end
    for seed in ${SEEDS_BUDGET:-1}; do
      one schedule-budget k8-m32-cosine "$seed" --preset fast --k 8 --batch 32 --warmup-epochs 0.5 --eval-every 1000
      one schedule-budget k8-m32-constant "$seed" --preset fast --k 8 --batch 32 --lr-schedule constant --warmup-epochs 0 --eval-every 1000
    done
    ;;
  k8-budget)  # K=8 x M=32 with the budget's epochs (the preset's time), probed halfway and at the end
    for seed in $SEEDS; do one k8-budget k8-m32 "$seed" --preset fast --k 8 --batch 32 --warmup-epochs 0.5 --eval-every 7; done
    ;;
  resnet32)  # as many epochs as fit in 30 minutes here (~270 s each), probed every 2 epochs (EVAL_EVERY)
    BACKBONE=resnet32
    for seed in $SEEDS; do one resnet32 fast "$seed" --preset fast --epochs 6 --eval-every "${EVAL_EVERY:-2}"; done
    ;;
  *) echo "unknown: $WHAT (finals, paper-reference, ablations, rates, ablations-v1, screens, schedule-budget, k8-budget or resnet32)" >&2; exit 2 ;;
esac
