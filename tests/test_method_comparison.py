"""Issue #6's check with its command shapes: on the embedded data, 2 epochs of conv4, every self-supervised
method beats random weights under linear evaluation and supervised training is the upper bound.

Slow (about 7 minutes on 2 cores, most of it relational reasoning at the default K=32): `pytest -m slow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SELF_SUPERVISED = ("relational", "simclr", "rotation", "deepcluster", "infomax")
MARGIN = 5.0  # top-1 points above random weights


def ssrr(*args: str | Path) -> str:
    done = subprocess.run([sys.executable, "-m", "ssrr", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def linear_top1(source: str | Path, dataset: Path, *extra: str | Path) -> float:
    return float(json.loads(ssrr("eval", "linear", source, "--dataset", dataset, "--json", *extra))["top1"])


@pytest.mark.slow
def test_every_method_beats_random_weights_and_supervised_is_the_upper_bound(tmp_path: Path) -> None:
    shards, runs = tmp_path / "shards", tmp_path / "runs"
    ssrr("shard", "synthetic", "--out", shards)
    dataset = shards / "synthetic"
    top1 = {}
    for method in (*SELF_SUPERVISED, "supervised"):
        ssrr("pretrain", "--method", method, "--dataset", dataset, "--backbone", "conv4", "--epochs", "2",
             "--out", runs, "--name", method, "--quiet")  # fmt: skip
        top1[method] = linear_top1(runs / method, dataset)
    top1["random"] = linear_top1("random:conv4", dataset, "--out", runs / "random")
    print(top1)
    for method in SELF_SUPERVISED:
        assert top1[method] > top1["random"] + MARGIN, (method, top1)
        assert top1["supervised"] > top1[method], (method, top1)
