"""Multi-process runs end to end (slow: every launch starts accelerate, torch and DALI in 3 processes): two
machines on localhost, DeepCluster's one clustering across ranks, and a 2-process run stopped mid-epoch, killed
and resumed that ends bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LAUNCH_BAR_S = 420  # both machines' commands, start to exit, on 2 shared cores (measured ~90 s on a busy machine)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def common(shards: Path, out: Path, name: str, *extra: str) -> list[str]:
    return ["--dataset", str(shards), "--backbone", "conv4", "--out", str(out), "--name", name,
            "--seed", "5", "--num-threads", "1", "--quiet", *extra]  # fmt: skip


def ssrr_processes(*args: str, port: int) -> subprocess.Popen:
    """`ssrr pretrain --processes 2 ARGS` in its own process group (so a kill reaches every rank)."""
    command = [sys.executable, "-m", "ssrr", "pretrain", "--processes", "2", "--main-port", str(port), *args]
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True, text=True
    )


def finish(*args: str) -> None:
    process = ssrr_processes(*args, port=free_port())
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def test_two_machines_on_localhost_train_in_sync(tiny_shards: Path, tmp_path: Path) -> None:
    # The launch lines as they are (no --multi_gpu): accelerate's simple launcher starts one plain process
    # per machine, which relaunches itself as the machine's share of the run.
    port = free_port()
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "2",
              "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2"]  # fmt: skip
    args = ["-m", "ssrr", "pretrain", *common(tiny_shards, tmp_path, "mm", "--k", "4", "--epochs", "1")]
    started = time.monotonic()
    machines = [
        subprocess.Popen(
            [*launch, "--machine_rank", str(rank), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
            text=True,
        )
        for rank in range(2)
    ]
    errors = [machine.communicate(timeout=LAUNCH_BAR_S)[1] for machine in machines]
    elapsed = time.monotonic() - started
    assert [m.returncode for m in machines] == [0, 0], [e[-2000:] for e in errors]
    assert elapsed < LAUNCH_BAR_S
    run = tmp_path / "mm"
    environment = json.loads((run / "environment.json").read_text())
    assert (environment["num_processes"], environment["num_machines"]) == (2, 2)
    assert "MULTI_CPU" in environment["distributed_type"]
    throughput = json.loads((run / "throughput.json").read_text())
    assert (throughput["num_processes"], throughput["num_machines"]) == (2, 2)
    assert throughput["weights_in_sync"] is True and throughput["steps"] == 2  # 128 images a rank, M=64


def test_deepcluster_ranks_record_one_set_of_assignments(tiny_shards: Path, tmp_path: Path) -> None:
    finish(*common(tiny_shards, tmp_path, "dc", "--method", "deepcluster", "--batch", "32", "--epochs", "2"))
    records = [json.loads(line) for line in (tmp_path / "dc" / "metrics.jsonl").read_text().splitlines()]
    hashes = [record["assignments_sha256"] for record in records]
    assert all(len(per_rank) == 2 and per_rank[0] == per_rank[1] for per_rank in hashes), hashes
    assert hashes[0] != hashes[1]  # re-clustered each epoch
    assert json.loads((tmp_path / "dc" / "throughput.json").read_text())["weights_in_sync"] is True


def _kill_group_when(process: subprocess.Popen, ready: Path, timeout: float = 600) -> bool:
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready.exists():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    process.wait()
    return False


@pytest.mark.parametrize("method", ["relational", "infomax"])
def test_two_process_run_stopped_killed_and_resumed_is_bit_identical(
    method: str, tiny_shards: Path, tmp_path: Path
) -> None:
    # 256 images, 2 ranks, M=32: 4 steps an epoch, 3 epochs. Deep InfoMax draws its prior's samples from torch's
    # global generator on every rank: only each rank's own restored RNG continues its stream.
    args = ["--method", method, "--k", "3", "--batch", "32", "--epochs", "3"]
    finish(*common(tiny_shards, tmp_path / "straight", "run", *args))
    work = common(tiny_shards, tmp_path / "work", "run", *args)
    finish(*work, "--max-steps", "6")  # stops mid-epoch 2, its checkpoint holds each rank's RNG
    checkpoints = tmp_path / "work" / "run" / "checkpoints"
    assert (checkpoints / "step-00000006").is_dir()
    state = json.loads((checkpoints / "step-00000006" / "state.json").read_text())["state"]
    assert {"rng", "rng-rank0", "rng-rank1"} <= state.keys() and state["batch_in_epoch"] == 2
    lifted = ("--max-steps", "1000000")  # the cap lifted: past the run's 12 steps (a typed 0 is refused)
    resumed = ssrr_processes(*work, "--resume", *lifted, port=free_port())
    killed = _kill_group_when(resumed, checkpoints / "step-00000008")  # kill -9 at the start of epoch 3
    finish(*work, "--resume", *lifted)
    straight, work_run = tmp_path / "straight" / "run", tmp_path / "work" / "run"
    assert (work_run / "backbone.safetensors").read_bytes() == (straight / "backbone.safetensors").read_bytes()
    last = "step-00000012/model.safetensors"
    assert (checkpoints / last).read_bytes() == (straight / "checkpoints" / last).read_bytes()
    assert killed, "the resumed run ended before it could be killed"
