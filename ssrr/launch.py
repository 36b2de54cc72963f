"""Where a process stands in a multi-process, multi-machine run, read from the launcher that started it.

Three launchers are understood:

- `accelerate launch` and `torchrun` set torch's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
  `LOCAL_WORLD_SIZE`, `GROUP_RANK`, `MASTER_ADDR`, `MASTER_PORT`): accelerate reads them as they are.
- SLURM's `srun` (one task per rank) sets only its own (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`,
  `SLURM_NODEID`, `SLURM_JOB_NODELIST`, ...): `adopt_slurm` translates them into torch's before accelerate starts,
  the main address being `MASTER_ADDR` when set, else the first host of the step's node list, and the port
  `MASTER_PORT` when set, else 29500 plus the job id modulo 1000 (two jobs sharing a node rarely collide).
- `ssrr pretrain --processes N` relaunches itself under `accelerate launch` with N processes on this machine
  (`relaunch_command`); `--machines`, `--machine-rank`, `--main-address` and `--main-port` (or, inside an `srun`
  step of one task per machine, SLURM's variables) make it one machine of several.

Pure functions of an environment mapping, so each rule is tested without a cluster.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ssrr.errors import SsrrError

DEFAULT_PORT = 29500
_TORCH_PLACE = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Machines:
    """The machines of a `--processes` relaunch: how many, this one's rank, and where rank 0 listens."""

    count: int = 1
    rank: int = 0
    address: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    def check(self) -> Machines:
        if self.count < 1:
            raise SsrrError(f"--machines must be at least 1, got {self.count}")
        if not 0 <= self.rank < self.count:
            raise SsrrError(f"--machine-rank {self.rank} is not in 0..{self.count - 1} (--machines {self.count})")
        if not 1 <= self.port <= 65535:
            raise SsrrError(f"--main-port must be 1 to 65535, got {self.port}")
        if self.count > 1 and not self.address:
            raise SsrrError("--main-address: the address of machine 0 is needed with --machines above 1")
        return self


def inside_launcher(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was started as one rank by a launcher (accelerate, torchrun, or an adopted srun)."""
    return "LOCAL_RANK" in env or "ACCELERATE_PROCESS_ID" in env


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `node[03-05,9],gpu1` -> `node03`, `a,b` -> `a`."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match or not match.group(1):
        raise SsrrError(f"SLURM node list {nodelist!r}: no host name in it")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _tasks_on_first_node(tasks_per_node: str) -> int:
    """`SLURM_TASKS_PER_NODE` such as `4(x2),3`: the count of the first group (the nodes' usual count)."""
    match = re.match(r"(\d+)", tasks_per_node)
    return int(match.group(1)) if match else 1


def slurm_step(env: Mapping[str, str]) -> bool:
    """Whether this process is a task of an `srun` step (a batch script's own shell is not one)."""
    return "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)


def slurm_place(env: Mapping[str, str]) -> dict[str, str]:
    """torch's variables for this task of an `srun` step with several tasks; {} when there is nothing to adopt
    (no srun step, a single task, or a launcher's variables already set)."""
    if not slurm_step(env) or any(name in env for name in _TORCH_PLACE):
        return {}
    world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if world <= 1:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    address = env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else "")
    if not address:
        raise SsrrError("srun: no MASTER_ADDR and no SLURM_JOB_NODELIST to find the first machine from")
    port = env.get("MASTER_PORT") or str(DEFAULT_PORT + int(env.get("SLURM_JOB_ID", "0") or 0) % 1000)
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1"
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(_tasks_on_first_node(per_node)),
        "GROUP_RANK": env.get("SLURM_NODEID", "0"),
        "MASTER_ADDR": address,
        "MASTER_PORT": port,
    }


def adopt_slurm(env: MutableMapping[str, str] = os.environ) -> bool:
    """Before accelerate starts: make an `srun` task a rank torch and accelerate recognise. True if adopted."""
    place = slurm_place(env)
    env.update(place)
    return bool(place)


def machine_index(env: Mapping[str, str] = os.environ) -> int:
    """This process's machine (node) rank: the launcher's `GROUP_RANK`, SLURM's node id, or rank // local size."""
    for name in ("GROUP_RANK", "SLURM_NODEID"):
        if env.get(name, "").isdigit():
            return int(env[name])
    local = int(env.get("LOCAL_WORLD_SIZE") or 0)
    return int(env.get("RANK") or 0) // local if local > 0 else 0


def slurm_machines(env: Mapping[str, str], given: Machines, typed: set[str]) -> Machines:
    """`--processes` inside an `srun` step of one task per machine: the machines from SLURM, unless typed."""
    if not slurm_step(env) or int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1) <= 1:
        return given
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if tasks != nodes:
        raise SsrrError(
            f"srun started {tasks} tasks on {nodes} machines: with --processes start one task per machine "
            "(srun --ntasks-per-node 1), or drop --processes and start one task per process"
        )
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    return Machines(
        count=given.count if "machines" in typed else nodes,
        rank=given.rank if "machine_rank" in typed else int(env.get("SLURM_NODEID", "0")),
        address=given.address if "main_address" in typed or not nodelist else first_host(nodelist),
        port=given.port if "main_port" in typed else int(env.get("MASTER_PORT") or given.port),
    )


def relaunch_command(argv: Sequence[str], processes: int, machines: Machines) -> list[str]:
    """`accelerate launch` of `python -m ssrr ARGV` with `processes` per machine on `machines.count` machines.

    The launch options (`--processes`, `--machines`, `--machine-rank`, `--main-address`, `--main-port`) are
    dropped from ARGV; accelerate's `--num_processes` is the total over all machines. On a machine without a
    GPU `--multi_gpu` starts CPU processes on gloo (accelerate's `--cpu` flag would start only one)."""
    kept = strip_options(argv, ("--processes", "--machines", "--machine-rank", "--main-address", "--main-port"))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    command += ["--num_processes", str(processes * machines.count), "--num_machines", str(machines.count)]
    if machines.count > 1:
        command += ["--machine_rank", str(machines.rank), "--main_process_ip", machines.address]
    command += ["--main_process_port", str(machines.port)]
    return [*command, "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ssrr", *kept]


def parent_command() -> list[str] | None:
    """The command line of the process that started this one (Linux `/proc`), or None where unreadable."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def accelerate_request(
    parent: Sequence[str] | None, env: Mapping[str, str] = os.environ
) -> tuple[int, Machines] | None:
    """(processes per machine, machines) that an `accelerate launch` asked for but did not start, or None.

    Without `--multi_gpu` (and no `accelerate config` saying so) on a machine with fewer than two GPUs,
    `accelerate launch --num_machines 2 --machine_rank R --num_processes 2 ...` starts ONE plain process per
    machine with only `MASTER_ADDR` / `MASTER_PORT` set (its simple launcher, meant for MPI): no rank, no world.
    That process (this one, `parent` being the launcher's command line) then relaunches itself as the
    launcher would have with `--multi_gpu` (`relaunch_command`)."""
    if parent is None or inside_launcher(env) or "MASTER_ADDR" not in env or "ACCELERATE_MIXED_PRECISION" not in env:
        return None
    tail = _accelerate_launch_arguments(parent)
    if tail is None:
        return None
    from accelerate.commands.launch import launch_command_parser

    try:
        args = launch_command_parser().parse_args(tail)
    except SystemExit:  # not a launch line accelerate itself would accept
        return None
    machines = int(args.num_machines or 1)
    total = int(args.num_processes or machines)
    if total <= 1 or args.multi_gpu:
        return None
    port = int(args.main_process_port or env.get("MASTER_PORT") or DEFAULT_PORT)
    address = str(args.main_process_ip or env["MASTER_ADDR"])
    return max(1, total // machines), Machines(machines, int(args.machine_rank or 0), address, port)


def _accelerate_launch_arguments(command: Sequence[str]) -> list[str] | None:
    """The arguments after `accelerate launch` (or `python -m accelerate.commands.launch`) in a command line."""
    for position, part in enumerate(command):
        if part == "accelerate.commands.launch":
            return list(command[position + 1 :])
        if part == "launch" and position and os.path.basename(command[position - 1]) == "accelerate":
            return list(command[position + 1 :])
    return None


def strip_options(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """ARGV without the options `names` (each with its value, spelled `--name value` or `--name=value`)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(f"{name}=") for name in names):
            continue
        kept.append(arg)
    return kept
