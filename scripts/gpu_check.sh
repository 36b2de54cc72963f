#!/usr/bin/env bash
# One prepared call for a lent GPU machine (see ../shared/docs/gpu.md): checks and times the GPU path, appends
# every result with the card's name to docs/benchmarks.md (each `ssrr bench` call records itself), and
# copies them under $OUT. Try it on the CPU first (tests/test_gpu_check.py does, marked slow):
#   DEVICE=cpu SHARDS=/tmp/shards/synthetic STEPS=2 RECORD=--no-record bash scripts/gpu_check.sh
set -euo pipefail
DEVICE=${DEVICE:-cuda}
SHARDS=${SHARDS:-shards/cifar10-jpeg}
STEPS=${STEPS:-50}
OUT=${OUT:-/tmp/ssrr-gpu-check}
RECORD=${RECORD:---record}  # --no-record: leave docs/benchmarks.md alone (the CPU-mode test)
mkdir -p "$OUT"
[ -d "$SHARDS" ] || ssrr shard imagefolder ../shared/data/cifar10-jpeg.tar.gz --name cifar10-jpeg
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/card.txt"
[ "$DEVICE" = cpu ] || pytest -q -m gpu | tail -3 | tee "$OUT/gpu-tests.txt"
PIPE_DEVICE=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu)
ssrr bench pipeline --dataset "$SHARDS" --k 32 --batch 64 --device "$PIPE_DEVICE" --steps "$STEPS" "$RECORD" --json | tee "$OUT/pipeline.json"
for BACKBONE in conv4 resnet32; do
  ssrr bench e2e --dataset "$SHARDS" --backbone "$BACKBONE" --k 32 --batch 64 --amp --device "$DEVICE" \
    --steps "$STEPS" --repeats 3 --baseline-steps 0 "$RECORD" --json | tee "$OUT/e2e-$BACKBONE.json"
done
ssrr bench methods --dataset "$SHARDS" --backbone conv4 --k 32 --batch 64 --device "$DEVICE" \
  --steps "$STEPS" --repeats 3 "$RECORD" --json | tee "$OUT/methods.json"
cp docs/benchmarks.md "$OUT/"
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
pipe = json.loads((out / "pipeline.json").read_text())
print(f"pipeline: {pipe['views_per_s']:,.0f} views/s on {pipe['device']}")
for name in ("conv4", "resnet32"):
    e = json.loads((out / f"e2e-{name}.json").read_text())
    mem = e.get("peak_gpu_memory_mb")
    print(f"e2e {name}: {e['views_per_s']:,.0f} views/s, data wait {e['data_wait']:.1%}, {e['device_name']}, "
          f"peak memory {mem or 0:,.0f} MB")
methods = json.loads((out / "methods.json").read_text())
print("methods (conv4) views/s: " + ", ".join(f"{n} {r['views_per_s']:,.0f}" for n, r in methods["methods"].items()))
PY
