"""The prepared GPU check (scripts/gpu_check.sh) runs end to end in its CPU mode, so a lent GPU's minutes are not
spent on a script that breaks before it measures anything."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ssrr.data.sources import load_dataset
from ssrr.data.writer import write_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_script_runs_in_cpu_mode(tmp_path: Path) -> None:
    write_dataset(load_dataset("synthetic", train_per_class=20, test_per_class=4), tmp_path / "shards")
    before = (REPO / "docs" / "benchmarks.md").read_bytes()
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "SHARDS": str(tmp_path / "shards" / "synthetic"),
        "STEPS": "2",
        "OUT": str(tmp_path / "out"),
        "RECORD": "--no-record",
    }
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pipeline:" in done.stdout and "e2e conv4:" in done.stdout and "methods (conv4)" in done.stdout
    for name in ("pipeline", "e2e-conv4", "e2e-resnet32", "methods"):
        assert json.loads((tmp_path / "out" / f"{name}.json").read_text())[
            "views_per_s" if name != "methods" else "methods"
        ]
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == before  # --no-record left the record alone
