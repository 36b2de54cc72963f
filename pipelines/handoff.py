"""The hand-off from DALI to torch: outputs become torch tensors through DLPack (no copy), and DALI's buffers live
until the GPU has finished reading them (events, never a host wait).

On the GPU the outputs come from ``Pipeline.outputs(cuda_stream=torch's current stream)``: DALI orders them on
that stream itself, so a kernel queued there reads finished data. The loader then queues its one copy out of
DALI's memory (view-major, clamped, in the training dtype) and hands the outputs to :class:`HeldOutputs`, which
keeps them referenced until an event recorded after that copy has passed; nothing waits on the host. On the CPU
the same :func:`as_torch` gives zero-copy views of DALI's host memory, so the CPU runs this path too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.dlpack


def as_torch(out: Any) -> torch.Tensor:
    """A DALI output (a TensorList of uniform shape, CPU or GPU) as one torch tensor on the same device, through
    DLPack: no copy, and the tensor keeps DALI's buffer alive while it exists."""
    return torch.utils.dlpack.from_dlpack(out.as_tensor())


class HeldOutputs:
    """DALI outputs kept alive until the work queued on a CUDA stream before ``hold`` has run."""

    def __init__(self) -> None:
        self._held: list[tuple[torch.cuda.Event, Any]] = []

    def hold(self, outputs: Any, device: torch.device) -> None:
        """Keep ``outputs`` until what is queued on ``device``'s current stream now has run (CPU: nothing to do)."""
        if device.type != "cuda":
            return
        self._held = [(event, kept) for event, kept in self._held if not event.query()]
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self._held.append((event, outputs))

    def __len__(self) -> int:
        return len(self._held)

    def clear(self) -> None:
        """Forget everything held (the loader is closing; the process synchronises its own teardown)."""
        self._held.clear()
