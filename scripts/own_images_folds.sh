#!/usr/bin/env bash
# The issue's one-epoch check (README's "Your own images") repeated on disjoint validation folders: each fold is
# 1,000 train + 500 test images of CIFAR-10's *training* split upscaled to 224 px (no CIFAR-10 test image), and
# each run is the check's three commands (pretrain tv:resnet18 for 1 epoch, K=4, 96-px views; linear evaluation
# of it and of random:tv:resnet18). Prints one line per fold and seed, then how often pretraining was ahead
# (WORK/margins.txt keeps each run's two top-1 figures).
#   scripts/own_images_folds.sh [WORK_FOLDER] [FOLDS] [SEEDS]      (default: data/folds 8 "1")
set -euo pipefail
work=${1:-data/folds}
folds=${2:-8}
seeds=${3:-1}
ssrr=${SSRR:-ssrr}
python=${PYTHON:-python}
top1() { "$python" -c "import json, sys; print(json.load(sys.stdin)['top1'])"; }
mkdir -p "$work"
: > "$work/margins.txt"
for ((fold = 0; fold < folds; fold++)); do
  data="$work/shards/fold$fold"
  if [[ ! -f "$data/manifest.json" ]]; then
    "$python" scripts/upscaled_folder.py --side 224 --validation --skip $((200 + 150 * fold)) \
      --train-per-class 100 --test-per-class 50 --out "$work/fold$fold" > /dev/null
    $ssrr shard imagefolder "$work/fold$fold" --name "fold$fold" --encoding jpeg --out "$work/shards" > /dev/null
  fi
  for seed in $seeds; do
    random=$($ssrr eval linear random:tv:resnet18 --dataset "$data" --seed "$seed" --out "$work/random" --json | top1)
    $ssrr pretrain --dataset "$data" --backbone tv:resnet18 --k 4 --view-size 96 --epochs 1 --seed "$seed" \
      --out "$work/runs" --name "fold$fold-s$seed" --quiet
    trained=$($ssrr eval linear "$work/runs/fold$fold-s$seed" --dataset "$data" --seed "$seed" --json | top1)
    echo "fold $fold seed $seed: pretrained $trained, random $random"
    echo "$trained $random" >> "$work/margins.txt"
  done
done
"$python" - "$work/margins.txt" <<'PY'
import statistics, sys
margins = [float(trained) - float(random) for trained, random in (line.split() for line in open(sys.argv[1]))]
ahead = sum(m > 0 for m in margins)
spread = statistics.stdev(margins) if len(margins) > 1 else 0.0
print(f"pretrained ahead in {ahead} of {len(margins)} runs; margin {statistics.mean(margins):+.2f} +- {spread:.2f}")
PY
