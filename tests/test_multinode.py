"""Beyond one machine: where a rank stands under each launcher (accelerate, torchrun, srun), the relaunch of
`--processes` on several machines, and DeepCluster's clustering across ranks (2 gloo processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssrr import ranks
from ssrr.errors import SsrrError
from ssrr.launch import (
    Machines,
    accelerate_request,
    adopt_slurm,
    first_host,
    inside_launcher,
    machine_index,
    relaunch_command,
    slurm_machines,
    slurm_place,
)
from ssrr.methods.deepcluster import cluster_across_ranks

SRUN_TASK = {  # what srun sets for task 5 of 8, 4 per node, on node 1 of node[03-04]
    "SLURM_JOB_ID": "123456",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NNODES": "2",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_JOB_NODELIST": "node[03-04]",
    "SLURM_STEP_NODELIST": "node[03-04]",
    "SLURM_TASKS_PER_NODE": "4(x2)",
}


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("node[03-05,9],gpu1", "node03"), ("a,b", "a"), ("single", "single"), ("gpu-[7,2-3]", "gpu-7")],
)
def test_first_host_of_a_slurm_node_list(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


def test_an_srun_task_becomes_a_torch_rank() -> None:
    env = dict(SRUN_TASK)
    assert adopt_slurm(env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")} == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
    }
    assert env["MASTER_ADDR"] == "node03" and env["MASTER_PORT"] == str(29500 + 456)
    assert inside_launcher(env) and machine_index(env) == 1
    # the user's MASTER_ADDR / MASTER_PORT win
    assert slurm_place({**SRUN_TASK, "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "4000"})["MASTER_ADDR"] == "10.0.0.9"


def test_nothing_is_adopted_outside_an_srun_step_or_under_another_launcher() -> None:
    batch_shell = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_ID"}
    assert slurm_place(batch_shell) == {}  # the batch script's own shell is no rank
    assert slurm_place({**SRUN_TASK, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}) == {}  # torchrun inside
    assert slurm_place({**SRUN_TASK, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}) == {}  # one task
    assert not inside_launcher({}) and machine_index({}) == 0
    assert machine_index({"RANK": "5", "LOCAL_WORLD_SIZE": "2"}) == 2  # no GROUP_RANK: rank // local size


def test_processes_relaunch_on_several_machines() -> None:
    argv = ["pretrain", "--processes", "2", "--machines=2", "--machine-rank", "1", "--k", "4", "--main-port", "7"]
    command = relaunch_command(argv, 2, Machines(2, 1, "10.0.0.1", 29600))
    launch = command[command.index("accelerate.commands.launch") + 1 : command.index("-m", 3)]
    assert launch[launch.index("--num_processes") + 1] == "4"  # accelerate counts processes over all machines
    assert launch[launch.index("--num_machines") + 1] == "2"
    assert launch[launch.index("--machine_rank") + 1] == "1"
    assert launch[launch.index("--main_process_ip") + 1] == "10.0.0.1"
    assert launch[launch.index("--main_process_port") + 1] == "29600"
    assert command[-3:] == ["pretrain", "--k", "4"]  # the launch options are not passed on to each rank
    one = relaunch_command(["pretrain", "--processes", "3"], 3, Machines())
    assert "--machine_rank" not in one and one[one.index("--num_machines") + 1] == "1"


def test_processes_inside_srun_take_the_machines_from_slurm() -> None:
    one_per_node = {**SRUN_TASK, "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}
    machines = slurm_machines(one_per_node, Machines(), typed=set())
    assert machines == Machines(2, 1, "node03", 29500)
    assert slurm_machines(one_per_node, Machines(port=5), typed={"main_port"}).port == 5
    with pytest.raises(SsrrError, match="one task per machine"):
        slurm_machines(SRUN_TASK, Machines(), typed=set())  # 8 tasks on 2 machines and --processes
    assert slurm_machines({}, Machines(3, 2, "h"), typed=set()) == Machines(3, 2, "h")


def test_bad_machine_options_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SsrrError, match=r"--machine-rank 2 is not in 0\.\.1"):
        Machines(2, 2).check()
    with pytest.raises(SsrrError, match="--machines must be at least 1"):
        Machines(0).check()
    done = subprocess.run(
        [sys.executable, "-m", "ssrr", "pretrain", "--machines", "2", "--machine-rank", "5", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")},
    )
    assert done.returncode != 0
    assert "--machine-rank 5 is not in 0..1" in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())


def _features(n: int = 240, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Features in 12 loose groups and their sample indices (a permutation, as shards store them)."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(12, dim, generator=generator) * 3
    z = centres[torch.arange(n) % 12] + torch.randn(n, dim, generator=generator)
    return z, torch.randperm(n, generator=generator)


def _cluster_on_rank(rank: int, world_size: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        z, index = _features()
        share = [(r * len(z) // world_size, (r + 1) * len(z) // world_size) for r in range(world_size)][rank]
        if rank == 1:  # unequal shares: one row fewer on rank 1
            share = (share[0], share[1] - 1)
        rows = slice(*share)
        assignments, weights = cluster_across_ranks(z[rows], index[rows], 20, torch.Generator().manual_seed(7))
        assert ranks.world() == (rank, world_size)
        torch.save({"assignments": assignments, "weights": weights}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and ssrr: ~10 s on an idle 2-core machine, more when busy
def test_deepcluster_ranks_share_one_clustering_equal_to_one_process(tmp_path: Path) -> None:
    mp.spawn(_cluster_on_rank, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(got[0]["assignments"], got[1]["assignments"])
    assert torch.equal(got[0]["weights"], got[1]["weights"])
    # one process, the same rows (rank 1's last one left out, as above), the same seed
    z, index = _features()
    keep = torch.ones(len(z), dtype=torch.bool)
    keep[len(z) - 1] = False
    alone, weights = cluster_across_ranks(z[keep], index[keep], 20, torch.Generator().manual_seed(7))
    assert torch.equal(got[0]["assignments"], alone) and torch.equal(got[0]["weights"], weights)
    assert int(alone[index[-1]]) == -1 and len(set(alone[alone >= 0].tolist())) == 20


def test_a_lone_process_of_accelerates_simple_launcher_relaunches_as_asked() -> None:
    simple = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29631", "ACCELERATE_MIXED_PRECISION": "no"}
    line = ["python", "-m", "accelerate.commands.launch", "--num_machines", "2", "--machine_rank", "1",
            "--main_process_ip", "127.0.0.1", "--main_process_port", "29631", "--num_processes", "2",
            "-m", "ssrr", "pretrain", "--k", "4"]  # fmt: skip
    assert accelerate_request(line, simple) == (1, Machines(2, 1, "127.0.0.1", 29631))
    cli = ["/usr/bin/python3", "/venv/bin/accelerate", "launch", "--num_processes", "4", "-m", "ssrr", "pretrain"]
    assert accelerate_request(cli, simple) == (4, Machines(1, 0, "127.0.0.1", 29631))
    assert accelerate_request(line, {}) is None  # not started by the simple launcher
    assert accelerate_request(line, {**simple, "LOCAL_RANK": "0"}) is None  # a rank already
    assert accelerate_request(["python", "train.py"], simple) is None
    assert accelerate_request([*line[:3], "--multi_gpu", *line[3:]], simple) is None
    assert accelerate_request([*line[:3], "--num_processes", "1", "-m", "ssrr"], simple) is None
