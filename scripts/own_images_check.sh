#!/usr/bin/env bash
# The "Your own images" walk-through of README.md, timed, and the issue's check on it: a 224-px JPEG folder in
# train/test layout (real CIFAR-10 upscaled), shard, pretrain tv:resnet18 (K=4, 96-px views, 1 epoch), linear
# evaluation against random:tv:resnet18, export to torchvision (strict load), embed, and torchvision's features
# of the test images equal `ssrr embed`'s within 1e-4.
#   scripts/own_images_check.sh [WORK_FOLDER] [TRAIN_PER_CLASS] [TEST_PER_CLASS]     (default: data/own 100 50)
set -euo pipefail
work=${1:-data/own}
train=${2:-100}
test=${3:-50}
ssrr=${SSRR:-ssrr}
python=${PYTHON:-python}
mkdir -p "$work"
step() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "TIME $name $((SECONDS - t0)) s" >&2; }
step folder "$python" scripts/upscaled_folder.py --side 224 --train-per-class "$train" --test-per-class "$test" --out "$work/photos"
step shard $ssrr shard imagefolder "$work/photos" --name photos --encoding jpeg --out "$work/shards"
step pretrain $ssrr pretrain --dataset "$work/shards/photos" --backbone tv:resnet18 --k 4 --view-size 96 --epochs 1 \
  --out "$work/runs" --name r18 --quiet
step linear $ssrr eval linear "$work/runs/r18" --dataset "$work/shards/photos" --json > "$work/linear.json"
step linear-random $ssrr eval linear random:tv:resnet18 --dataset "$work/shards/photos" --out "$work/random" --json \
  > "$work/linear-random.json"
step export $ssrr export "$work/runs/r18" --format torchvision --out "$work/r18.pt"
step embed $ssrr embed "$work/runs/r18" "$work/photos/test" --out "$work/test.npy"
step check "$python" - "$work" <<'PY'
import csv, json, sys
from pathlib import Path
import numpy as np, torch, torchvision
from ssrr.data.formats import load_manifest
from ssrr.eval.embed import load_image, normalise

work = Path(sys.argv[1])
trained = json.loads((work / "linear.json").read_text())["top1"]
random = json.loads((work / "linear-random.json").read_text())["top1"]
model = torchvision.models.resnet18(weights=None)
model.load_state_dict(torch.load(work / "r18.pt"), strict=True)
model.fc = torch.nn.Identity()
paths = [row["path"] for row in csv.DictReader(open(work / "test.csv"))]
images = np.stack([load_image(work / "photos" / "test" / p, None) for p in paths])
with torch.no_grad():
    ours = torch.cat([model.eval()(normalise(images[i:i + 100], load_manifest(work / "shards" / "photos")))
                      for i in range(0, len(images), 100)]).numpy()
gap = float(np.abs(ours - np.load(work / "test.npy")).max())
print(f"linear top-1: tv:resnet18 pretrained {trained:.2f}%, random {random:.2f}%; "
      f"torchvision vs ssrr embed: max |diff| {gap:.2e} over {len(paths)} images")
assert trained > random, "the pretrained backbone does not beat random weights"
assert gap < 1e-4, "torchvision's features differ from ssrr embed's"
PY
