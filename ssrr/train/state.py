"""What the pretraining loop carries from stage to stage: where the run stands (`Progress`), what an epoch's
steps add up (`EpochTally`), what a call returns (`RunResult`), and what a probe handed to the loop is (`Probe`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ssrr.config import RunConfig
from ssrr.precision import Execution
from ssrr.train.budget import TimeBudget


@dataclass
class RunResult:
    run_dir: Path
    epochs_done: int
    steps: int
    throughput: dict[str, float]


class Probe(Protocol):
    """A held-out measurement the loop runs on the backbone every `every` complete epochs (see ssrr.eval.probes);
    its value is logged as `name` in metrics.jsonl, beside the pretraining time so far."""

    @property
    def name(self) -> str: ...

    @property
    def every(self) -> int: ...

    def __call__(self, backbone: torch.nn.Module, shard_dir: Path, execution: Execution) -> float: ...

    # A probe may also carry `split`, the split it scores (logged as `probe_split` beside its value), and
    # `every_steps`: run every N optimizer steps instead of every `every` epochs (and after the last step).


@dataclass
class Progress:
    """Where the run stands: the epoch, the batch to resume from in it, optimizer steps, and the clock."""

    epoch: int
    skip: int  # batches of `epoch` already trained (resuming mid-epoch)
    step: int
    started: float
    elapsed_before: float  # pretraining seconds of the run before this call (resumed runs)
    probe_s: float = 0.0  # seconds spent in probes, not pretraining
    elapsed_s: float = 0.0  # pretraining seconds of the whole run at the last record (resumed calls included)
    throughput: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False  # Ctrl-C: stop at the next step boundary
    saved_at_stop: bool = False  # a checkpoint was written where the interrupted run stopped
    first_step: int = 0  # the step this call started at

    def interrupt(self) -> None:
        self.interrupted = True

    def finished(self, config: RunConfig, budget: TimeBudget | None) -> bool:
        if budget is not None and budget.ended(self.step):
            return True
        return self.epoch >= config.epochs or bool(config.max_steps and self.step >= config.max_steps)

    def pretraining_s(self) -> float:
        """Pretraining seconds of the whole run so far (resumed calls included, probes left out)."""
        return self.elapsed_before + time.perf_counter() - self.started - self.probe_s


@dataclass
class EpochTally:
    """What one epoch's steps add up: loss and metric sums, steps taken, time waiting for data."""

    device: torch.device
    started: float = field(default_factory=time.perf_counter)
    step_started: float = 0.0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counted: int = 0
    wait: float = 0.0
    batch_in_epoch: int = 0

    def add(self, out: Any) -> None:
        self.counted += 1
        self.batch_in_epoch += 1
        self.sums["loss"] = self.sums.get("loss", torch.zeros((), device=self.device)) + out.loss.detach().float()
        for key, value in out.metrics.items():
            tensor = torch.as_tensor(value, device=self.device, dtype=torch.float32)
            self.sums[key] = self.sums.get(key, torch.zeros((), device=self.device)) + tensor.detach()
