#!/usr/bin/env bash
# The default suite at one end of the dependency range: `scripts/test_deps.sh oldest|newest [pytest args]`.
# Creates .venvs/<end> (a clean venv, reused on later runs), installs `-e .[dev]` pinned by
# constraints/<end>.txt, prints the versions in effect, then runs the suite with that venv's Python.
set -euo pipefail
cd "$(dirname "$0")/.."
end=${1:-}
if [[ $end != oldest && $end != newest ]]; then
    echo "usage: scripts/test_deps.sh oldest|newest [pytest args] (constraints/<end>.txt pins the versions)" >&2
    exit 2
fi
shift
venv=.venvs/$end
python=${SSRR_BASE_PYTHON:-python3}
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
# PIP_CONSTRAINT replaces (rather than adds to) a `constraint` set in a pip config file, such as a
# machine-wide version cap, so these pins are the ones that hold.
PIP_CONSTRAINT=constraints/$end.txt "$venv/bin/python" -m pip install -q -e ".[dev]"
"$venv/bin/python" - "$end" <<'EOF'
import sys
from importlib.metadata import version

import torch
import torchvision
from torchvision.ops import nms  # the compiled ops: fails when torchvision was built for another torch

boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
assert nms(boxes, torch.tensor([1.0, 0.5]), 0.5).tolist() == [0], "torchvision's compiled ops misbehave"
names = ["torch", "torchvision", "nvidia-dali-cuda130", "accelerate", "numpy", "typer", "rich", "webdataset",
         "safetensors", "pillow", "matplotlib"]
print(f"dependencies ({sys.argv[1]}): " + ", ".join(f"{n} {version(n)}" for n in names), flush=True)
EOF
PATH="$PWD/$venv/bin:$PATH" exec "$venv/bin/python" -m pytest "$@"
