#!/usr/bin/env bash
# One prepared call for a lent GPU machine: checks and times ssrr's GPU path on a bare copy of the repository, and
# prints ONE table last (also $OUT/summary.md; every figure in $OUT/results.json, every stage's log in
# $OUT/check.log): card, driver, torch and DALI builds; GPU tests passed/failed; pipeline views/s on raw and on
# JPEG shards; `ssrr pretrain --amp` views/s and data wait for conv4 and resnet32 at K=32 M=64; host syncs per
# training step (torch.cuda.set_sync_debug_mode); peak memory of torch and of DALI; a short linear evaluation's
# top-1 against random weights.
#
#   bash scripts/gpu_check.sh          # on the GPU machine (`just gpu-check`)
#   bash scripts/gpu_check.sh --cpu    # the same stages on the CPU, smaller (SSRR_CHECK_DEVICE=cpu too):
#                                      # tests/test_gpu_check.py runs it (slow)
#
# Nothing outside the repository is read: the data is made here (`python -m ssrr shard synthetic`, raw and
# JPEG-encoded), the project runs uninstalled (`python -m ssrr`, the repository on PYTHONPATH), and wheels the
# machine lacks travel as parts in .gpu1/, .gpu2/, ... (made here by scripts/gpu_prepare.sh), joined and installed
# into /tmp/site first. Every stage has its own timeout and a failing one does not stop the next.
#
# Time on one H100 (an estimate, not a measurement: no GPU has run this script yet): install of the carried wheels
# ~1 min, data ~0.5 min, GPU tests ~1.5 min, pipelines ~1 min, two pretraining runs ~2 min, sync count ~1 min,
# linear evaluations ~1 min: about 8 minutes, under the 10 the issue allows; the stage timeouts add up to more,
# so a hung stage is cut off rather than the whole call.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
MODE=${SSRR_CHECK_DEVICE:-cuda}
if [ "${1:-}" = "--cpu" ]; then MODE=cpu; fi
if [ "${1:-}" = "--join-only" ]; then MODE="join"; fi
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/ssrr-gpu-check}
WORK=$(mktemp -d /tmp/ssrr-check.XXXXXX)
mkdir -p "$OUT"
: >"$OUT/check.log"
: >"$WORK/stages.tsv"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "$MODE" = cpu ]; then  # sizes that finish on two cores; the GPU's are the issue's (K=32, M=64)
  PER_CLASS=${PER_CLASS:-40} K=${K:-4} M=${M:-16} EPOCHS=1 MAX_STEPS=4 STEPS=4 LINEAR_EPOCHS=1 DEVICE=cpu
  PIPE_DEVICE=cpu TESTS=no
else
  PER_CLASS=${PER_CLASS:-500} K=${K:-32} M=${M:-64} EPOCHS=2 MAX_STEPS=0 STEPS=40 LINEAR_EPOCHS=10 DEVICE=cuda
  PIPE_DEVICE=gpu TESTS=yes
fi
export SSRR_CHECK_K=$K SSRR_CHECK_M=$M

stage() {  # stage NAME SECONDS COMMAND...: run it with its own timeout, log it, record its status, never stop
  local name=$1 seconds=$2 started rc
  shift 2
  started=$(date +%s)
  echo "== $name (timeout ${seconds}s): $*" | tee -a "$OUT/check.log"
  timeout "$seconds" "$@" >>"$OUT/check.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - started))" >>"$WORK/stages.tsv"
  echo "   -> exit $rc after $(($(date +%s) - started)) s" | tee -a "$OUT/check.log"
}

join_carried() {  # the carried wheels (whole, or NAME.whl.partNNN pieces across .gpuN/ folders) into $1
  local dest=$1 first name
  mkdir -p "$dest"
  for wheel in .gpu[0-9]*/*.whl; do [ -e "$wheel" ] && cp "$wheel" "$dest/"; done
  for first in .gpu[0-9]*/*.whl.part000; do
    [ -e "$first" ] || continue
    name=$(basename "${first%.part000}")
    for part in .gpu[0-9]*/"$name".part*; do echo "${part##*.part} $part"; done | sort -n | cut -d' ' -f2- |
      while read -r part; do cat "$part"; done >"$dest/$name"
  done
}

install_carried() {
  join_carried "$WORK/wheels"
  ls "$WORK"/wheels/*.whl >/dev/null 2>&1 || { echo "no carried wheels: using what is installed"; return 0; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WORK"/wheels/*.whl
}

if [ "$MODE" = join ]; then join_carried "${2:?--join-only DEST}"; exit $?; fi

stage install 300 bash -c "$(declare -f join_carried install_carried); WORK='$WORK' PYTHON='$PYTHON' install_carried"
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$PYTHONPATH"; fi
SSRR=("$PYTHON" -m ssrr)
STAGES=("$PYTHON" scripts/gpu_check_stages.py)
RAW=$WORK/shards/raw JPEG=$WORK/shards/jpeg RUNS=$WORK/runs
stage env 120 sh -c "\"\$@\" env --json >'$WORK/env.json'" _ "${SSRR[@]}"
stage data-raw 300 "${SSRR[@]}" shard synthetic --out "$WORK/shards" --name raw --encoding raw \
  --train-per-class "$PER_CLASS" --test-per-class "$((PER_CLASS / 5))"
stage data-jpeg 300 "${SSRR[@]}" shard synthetic --out "$WORK/shards" --name jpeg --encoding jpeg --quality 90 \
  --train-per-class "$PER_CLASS" --test-per-class "$((PER_CLASS / 5))"
if [ "$TESTS" = yes ]; then
  stage gpu-tests 420 sh -c "\"\$@\" -m pytest -q -m gpu -p no:cacheprovider tests >'$WORK/gpu-tests.txt' 2>&1" \
    _ "$PYTHON"
fi
stage pipeline-raw 240 "${STAGES[@]}" pipeline "$RAW" "$PIPE_DEVICE" "$STEPS" "$WORK/pipeline-raw.json"
stage pipeline-jpeg 240 "${STAGES[@]}" pipeline "$JPEG" "$PIPE_DEVICE" "$STEPS" "$WORK/pipeline-jpeg.json"
for BACKBONE in conv4 resnet32; do
  stage "pretrain-$BACKBONE" 420 "${SSRR[@]}" pretrain --dataset "$RAW" --backbone "$BACKBONE" --k "$K" --batch "$M" \
    --amp --epochs "$EPOCHS" --max-steps "$MAX_STEPS" --device "$DEVICE" --out "$RUNS" --name "$BACKBONE" --quiet
done
stage syncs 300 "${STAGES[@]}" syncs "$RAW" "$DEVICE" "$WORK/syncs.json"
stage linear-pretrained 300 sh -c "\"\$@\" >'$WORK/linear-pretrained.json'" _ "${SSRR[@]}" eval linear "$RUNS/conv4" \
  --dataset "$RAW" --epochs "$LINEAR_EPOCHS" --device "$DEVICE" --precision auto --json
stage linear-random 300 sh -c "\"\$@\" >'$WORK/linear-random.json'" _ "${SSRR[@]}" eval linear random:conv4 \
  --dataset "$RAW" --epochs "$LINEAR_EPOCHS" --device "$DEVICE" --precision auto --out "$RUNS/random" --json
"$PYTHON" scripts/gpu_check_stages.py table "$WORK" "$MODE" "$OUT"
