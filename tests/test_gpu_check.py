"""The prepared GPU check (scripts/gpu_check.sh) travels on its own and runs end to end in its CPU mode, so a lent
GPU's minutes are not spent on a script that breaks before it measures anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [REPO / "scripts" / "gpu_check.sh", REPO / "scripts" / "gpu_prepare.sh"]


def test_the_check_reads_nothing_outside_the_repository_and_parses() -> None:
    for script in SCRIPTS:
        text = script.read_text()
        assert "../shared" not in text  # the GPU machine has no ../shared: nothing there is read
        assert "set -e" not in text.replace("set -euo", "").replace("set -uo", "")  # a failing stage never stops it
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
        if shutil.which("shellcheck"):
            done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
            assert done.returncode == 0, done.stdout
    check = SCRIPTS[0].read_text()
    assert "-m ssrr" in check and "\nssrr " not in check  # runs uninstalled


def test_carried_wheels_split_and_join_back_byte_for_byte(tmp_path: Path) -> None:
    """gpu_prepare.sh's parts (here of 1 MiB) spread over .gpuN/ folders; gpu_check.sh joins them again."""
    wheels, copy = tmp_path / "wheels", tmp_path / "repo"
    wheels.mkdir()
    big, small = os.urandom(2_500_000), os.urandom(200_000)
    (wheels / "big-1.0-py3-none-any.whl").write_bytes(big)
    (wheels / "small-1.0-py3-none-any.whl").write_bytes(small)
    (copy / "scripts").mkdir(parents=True)
    for script in SCRIPTS:
        shutil.copy(script, copy / "scripts" / script.name)
    env = {**os.environ, "FROM": str(wheels), "PART_MB": "1"}
    done = subprocess.run(["bash", "scripts/gpu_prepare.sh"], cwd=copy, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folders = sorted(p.name for p in copy.glob(".gpu*"))
    assert len(folders) >= 3 and all(f.stat().st_size <= 2**20 for f in copy.glob(".gpu*/*"))
    joined = tmp_path / "joined"
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--join-only", str(joined)], cwd=copy, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (joined / "big-1.0-py3-none-any.whl").read_bytes() == big
    assert (joined / "small-1.0-py3-none-any.whl").read_bytes() == small


@pytest.mark.slow
def test_gpu_check_script_runs_in_cpu_mode(tmp_path: Path) -> None:
    before = (REPO / "docs" / "benchmarks.md").read_bytes()
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PER_CLASS": "20"}
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout.split("| ssrr GPU check (cpu) | result |", 1)[1]  # the one table, printed last
    assert "stages failed | none |" in table, done.stdout
    for row in ("pipeline views/s, raw", "pipeline views/s, jpeg", "pretrain --amp conv4", "pretrain --amp resnet32"):
        assert row in table and "failed" not in table.split(row, 1)[1].splitlines()[0]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["pipeline-jpeg"]["views_per_s"] > 0 and results["linear-random"]["top1"] >= 0
    assert (tmp_path / "out" / "summary.md").read_text().splitlines()[-1].startswith("| stages failed")
    assert (REPO / "docs" / "benchmarks.md").read_bytes() == before  # the check records nothing in the docs
