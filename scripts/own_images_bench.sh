#!/usr/bin/env bash
# docs/benchmarks.md, "Your own images": tv:resnet18 pretrained with relational reasoning (K=4, 64-px views,
# 3 epochs, bf16 where native) on 1,000 real CIFAR-10 images upscaled to 96 px, against random:tv:resnet18,
# linear protocol (100 epochs) on 500 test images, seeds 1-3; then views/s of tv:resnet18 and tv:resnet50 at
# 96, 160 and 224 px (`ssrr bench step`). Run it alone on the machine: every figure is a time.
#   scripts/own_images_bench.sh [WORK_FOLDER]        (default: data/bench96; `data/` is ignored by git)
set -euo pipefail
work=${1:-data/bench96}
ssrr=${SSRR:-ssrr}
python=${PYTHON:-python}
"$python" scripts/upscaled_folder.py --side 96 --train-per-class 100 --test-per-class 50 --out "$work/photos"
$ssrr shard imagefolder "$work/photos" --name c10-96 --encoding jpeg --out "$work/shards"
for seed in 1 2 3; do
  t0=$SECONDS
  $ssrr pretrain --dataset "$work/shards/c10-96" --backbone tv:resnet18 --k 4 --view-size 64 --epochs 3 --amp \
    --seed "$seed" --out "$work/runs" --name "r18-s$seed" --quiet
  echo "pretrain seed $seed: $((SECONDS - t0)) s"
  $ssrr eval linear "$work/runs/r18-s$seed" --seed "$seed" --json > "$work/linear-r18-s$seed.json"
  $ssrr eval linear random:tv:resnet18 --dataset "$work/shards/c10-96" --seed "$seed" --out "$work/random-s$seed" \
    --json > "$work/linear-random-s$seed.json"
done
"$python" - "$work" <<'PY'
import json, statistics, sys
from pathlib import Path
work = Path(sys.argv[1])
def top1(kind):
    return [json.loads((work / f"linear-{kind}-s{s}.json").read_text())["top1"] for s in (1, 2, 3)]
r18, rnd = top1("r18"), top1("random")
margins = [a - b for a, b in zip(r18, rnd)]
for name, xs in (("tv:resnet18 pretrained", r18), ("random:tv:resnet18", rnd), ("margin", margins)):
    print(f"{name}: {statistics.mean(xs):.2f} +- {statistics.stdev(xs):.2f} (seeds {', '.join(f'{x:.2f}' for x in xs)})")
PY
for backbone in tv:resnet18 tv:resnet50; do
  for side in 96 160 224; do
    $ssrr bench step --backbone "$backbone" --side "$side" --k 4 --batch 16 --amp --repeats 3 --baseline-repeats 0 --json
  done
done
