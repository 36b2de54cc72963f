"""How a pretraining run ends, in one defined order, whatever ends it: success, an error or Ctrl-C.

`pretrain` holds one `contextlib.ExitStack` for the whole run; `set_up` registers on it, as it builds them, the
process group (`end_processes`) and then the loaders (`LoaderRegistry`), so they are undone last-built first:

1. every loader still open is closed: its DALI pipelines stop and their worker and prefetch threads are joined;
2. the trackers (`--log-with`) are finished;
3. after a clean run, a barrier: no rank takes its side of the process group down while another still uses it;
4. the process group this run created is destroyed (its gloo/NCCL threads joined) and accelerate's state reset.

Left to the interpreter's exit instead, the native threads of steps 1 and 4 were still running while their
owners were torn down: rarely, `terminate called without an active exception` (SIGABRT) after a finished run.

Ctrl-C (`interrupt_deferred`): the first SIGINT is recorded and the loop stops at the next step boundary, so
the weights and the optimizer are never caught halfway through a step; a second one stops at once. Either way
the line the user sees is `ssrr.errors.Interrupted` (exit code 130), with the checkpoint to resume from.
"""

from __future__ import annotations

import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import torch.distributed as dist
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from ssrr.pipelines.loader import ViewLoader


class LoaderRegistry:
    """The loaders a run made (the training loader, DeepCluster's and the recalibration's), weakly held: one
    dropped by its user is closed by its own finaliser; the ones still alive are closed by `close_all`."""

    def __init__(self) -> None:
        self._open: weakref.WeakSet[ViewLoader] = weakref.WeakSet()

    def add(self, loader: ViewLoader) -> ViewLoader:
        self._open.add(loader)
        return loader

    def close_all(self) -> None:
        for loader in list(self._open):
            loader.close()
        self._open.clear()


def group_owner() -> bool:
    """Called before the run's `Accelerator` exists: whether the run will own the process group it runs on
    (none exists yet), and so must destroy it. A group made by the caller is left to the caller."""
    return not (dist.is_available() and dist.is_initialized())


def end_processes(accelerator: Accelerator, owned: bool) -> Callable[..., None]:
    """The exit callback (for `ExitStack.push`) that ends the run's processes: trackers finished; then, when
    the run owns the process group, a barrier after a clean run and the group destroyed."""

    def end(kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for tracker in accelerator.trackers:
            tracker.finish()
        if not owned or not (dist.is_available() and dist.is_initialized()):
            return
        if kind is None:  # after an error or Ctrl-C a peer may be gone: a barrier could wait forever
            dist.barrier()
        dist.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)  # a later Accelerator here starts afresh

    return end


@contextmanager
def interrupt_deferred(on_interrupt: Callable[[], Any]) -> Iterator[None]:
    """Within the block, the first Ctrl-C calls `on_interrupt()` (the loop then stops at its next step
    boundary) and a second raises KeyboardInterrupt at once. Only where Python's default handler is in place,
    in the main thread: an ignored SIGINT (a job started with `nohup`) or a caller's own handler is kept."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pressed = [False]

    def handle(signum: int, frame: Any) -> None:
        if pressed[0]:
            raise KeyboardInterrupt
        pressed[0] = True
        on_interrupt()

    signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
