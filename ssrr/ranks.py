"""Collectives the layers above need across the ranks of a run, with one process as the trivial case.

Every function works without `torch.distributed` being initialised (one process: nothing to exchange), so a
method or probe calls them unconditionally. With several processes every rank must call them in the same
order (they are collectives).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _exchange_device(tensor: torch.Tensor) -> torch.device:
    """NCCL exchanges CUDA tensors only; gloo any CPU tensor."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `local` (N_r, ...) concatenated in rank order, on every rank; ranks may hold
    different N_r (each is padded to the largest for the exchange, the padding dropped after)."""
    _, size = world()
    if size == 1:
        return local
    device = _exchange_device(local)
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([len(local)], dtype=torch.long, device=device))
    sizes = [int(c) for c in counts]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    pieces = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:n] for piece, n in zip(pieces, sizes, strict=True)]).to(local.device)


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's `tensor` on every rank (same shape and dtype on all ranks); returned, not changed in place."""
    _, size = world()
    if size == 1:
        return tensor
    moved = tensor.detach().to(_exchange_device(tensor)).contiguous().clone()
    dist.broadcast(moved, src=0)
    return moved.to(tensor.device)


def sync_from_main(tensors: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values of `tensors` (a module's buffers or parameters) into this rank's, in place."""
    if world()[1] == 1:
        return
    with torch.no_grad():
        for tensor in tensors:
            tensor.copy_(broadcast_from_main(tensor))


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (a small picklable object: it travels between the run's own processes, in memory),
    in rank order, on every rank."""
    _, size = world()
    if size == 1:
        return [value]
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    """Wait until every rank gets here."""
    if world()[1] > 1:
        dist.barrier()
