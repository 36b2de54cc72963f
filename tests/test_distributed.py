"""Two CPU processes on gloo through `accelerate launch` (what `ssrr pretrain --processes 2` runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssrr.config import RunConfig
from ssrr.train.loop import pretrain


def _launch(shards: Path, out: Path, name: str, batch: int, processes: int) -> Path:
    args = [
        "--dataset",
        str(shards),
        "--backbone",
        "conv4",
        "--k",
        "2",
        "--batch",
        str(batch),
        "--epochs",
        "2",
        "--out",
        str(out),
        "--name",
        name,
        "--seed",
        "5",
        "--num-threads",
        "1",
        "--log-samples",
        "--quiet",
    ]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "ssrr",
        "pretrain",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / name


def _samples(run: Path, rank: int) -> list[list[int]]:
    lines = (run / f"samples-rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line)[1] for line in lines]


@pytest.fixture(scope="module")
def two_process_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _launch(tiny_shards, tmp_path_factory.mktemp("ddp"), "ddp", batch=16, processes=2)


def test_two_processes_run_on_gloo_and_record_it(two_process_run: Path) -> None:
    env = json.loads((two_process_run / "environment.json").read_text())
    assert env["num_processes"] == 2
    assert "MULTI_CPU" in env["distributed_type"]
    throughput = json.loads((two_process_run / "throughput.json").read_text())
    assert throughput["processes"] == 2
    assert {"views_per_s_rank0", "views_per_s_rank1"} <= throughput.keys()


def test_both_ranks_end_with_identical_weights(two_process_run: Path) -> None:
    assert json.loads((two_process_run / "throughput.json").read_text())["weights_in_sync"] is True


def test_ranks_see_disjoint_data_that_covers_each_epoch(two_process_run: Path) -> None:
    rank0, rank1 = _samples(two_process_run, 0), _samples(two_process_run, 1)
    assert len(rank0) == len(rank1) == 2 * 8  # 2 epochs x (128 samples per rank / 16): equal step counts
    for epoch in range(2):
        seen0 = [i for step in rank0[epoch * 8 : (epoch + 1) * 8] for i in step]
        seen1 = [i for step in rank1[epoch * 8 : (epoch + 1) * 8] for i in step]
        assert not set(seen0) & set(seen1)
        assert sorted(seen0 + seen1) == list(range(256))  # every sample exactly once per epoch
    assert rank0[:8] != rank0[8:]  # a new order every epoch


def test_two_processes_match_one_process_with_the_same_global_batch(
    two_process_run: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    # Not bit-identical: each rank pairs and batch-normalises its own 16 images, one process its 32.
    single = pretrain(
        RunConfig(
            dataset=str(tiny_shards),
            backbone="conv4",
            k=2,
            batch=32,
            epochs=2,
            out=str(tmp_path),
            name="one",
            seed=5,
            num_threads=1,
        ),
        show=False,
    )
    two = json.loads((two_process_run / "throughput.json").read_text())
    one = json.loads((single.run_dir / "throughput.json").read_text())
    assert two["steps"] == one["steps"] == 16
    assert two["loss"] == pytest.approx(one["loss"], rel=0.15)
