#!/usr/bin/env bash
# Prepare, on a machine with pip and a network, the wheels the GPU machine lacks (its notes, gpu.md in the shared
# docs: Python 3.12, torch 2.11 with CUDA 13, no DALI, no webdataset), split into parts under 60 MiB in git-ignored
# folders .gpu1/, .gpu2/, ... Each folder is carried by one device call (`carry: [".gpuN"]`, back to back while
# the machine is warm); scripts/gpu_check.sh joins and installs them into /tmp/site there.
#
#   bash scripts/gpu_prepare.sh                       # DALI (cuda130), its codecs and needs, webdataset, braceexpand
#   bash scripts/gpu_prepare.sh braceexpand==0.1.7    # only the packages named
#   FROM=dir bash scripts/gpu_prepare.sh              # split wheels already in dir (no download)
#
# PART_MB (default 60) sets the part size. Versions default to the ones installed here, so the GPU machine runs
# what the tests here ran.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PART_MB=${PART_MB:-60}
PYTHON=${PYTHON:-python3}
DEFAULT_PACKAGES=(nvidia-dali-cuda130 nvidia-nvimgcodec-cu13 nvidia-nvjpeg nvidia-nvjpeg2k-cu13 nvidia-nvtiff-cu13
  nvidia-libnvcomp-cu13 astunparse gast libcst makefun nvtx optree six webdataset braceexpand)

pinned() {  # NAME -> NAME==VERSION when installed here, else NAME
  local version
  version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null)
  if [ -n "$version" ]; then echo "$1==$version"; else echo "$1"; fi
}

download() {  # into $1, the packages named after it (cp312 manylinux wheels, no dependencies)
  local dest=$1
  shift
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
    -d "$dest" "$@"
}

split_into_folders() {  # the wheels of $1 into .gpu1/, .gpu2/, ...: whole when small, else parts NAME.partNNN
  local src=$1 limit=$((PART_MB * 1024 * 1024)) folder=1 used=0 wheel size parts part
  rm -rf .gpu[0-9]*/
  mkdir -p .gpu1
  for wheel in "$src"/*.whl; do
    size=$(stat -c %s "$wheel")
    if [ "$size" -le "$limit" ]; then
      if [ $((used + size)) -gt "$limit" ]; then folder=$((folder + 1)) used=0; mkdir -p ".gpu$folder"; fi
      cp "$wheel" ".gpu$folder/"
      used=$((used + size))
      continue
    fi
    parts=$(mktemp -d)
    split -b "$limit" -d -a 3 "$wheel" "$parts/$(basename "$wheel").part"
    for part in "$parts"/*; do
      size=$(stat -c %s "$part")
      if [ $((used + size)) -gt "$limit" ]; then folder=$((folder + 1)) used=0; mkdir -p ".gpu$folder"; fi
      mv "$part" ".gpu$folder/"
      used=$((used + size))
    done
    rm -rf "$parts"
  done
}

main() {
  local src packages=()
  if [ -n "${FROM:-}" ]; then
    src=$FROM
  else
    src=$(mktemp -d)
    if [ $# -gt 0 ]; then packages=("$@"); else
      for name in "${DEFAULT_PACKAGES[@]}"; do packages+=("$(pinned "$name")"); done
    fi
    download "$src" "${packages[@]}" || { echo "gpu_prepare: pip download failed" >&2; exit 1; }
  fi
  split_into_folders "$src"
  echo "carry each folder in its own device call, back to back, then run the check in the last one:"
  for folder in .gpu[0-9]*/; do
    echo "  ${folder%/}: $(du -sm "$folder" | cut -f1) MiB"
  done
  echo "  last call: bash scripts/gpu_check.sh   (joins and installs the carried wheels first)"
}

main "$@"
