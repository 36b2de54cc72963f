"""The public implementation's way of pretraining, as strong as its users would run it: the baseline of `bench e2e`
and `bench accuracy`.

Its structure: a DataLoader whose workers apply the torchvision transform K times per PIL image, feeding a step
with the literal pair loop (plain relation head, focal loss, Adam 1e-3). Its settings are tuned as a user
would: the best of a small grid of DataLoader workers (0..min(8, cores)), torch threads (1..cores) and memory
format (NCHW, or channels_last: a flag any user can set), each probed briefly; the best is then timed with the
same warm-up, steps and repeats as ours, its repeats interleaved with ours by the caller. Its parts are timed too
(the loader alone, the step alone on a batch in memory) and checked to compose with the whole, so a starved or
oversubscribed baseline shows instead of inflating a ratio.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from ssrr.bench.literal import literal_relation_logits
from ssrr.bench.step import intra_op_threads
from ssrr.bench.timing import median_step_s, timed_steps
from ssrr.hardware import cores, default_workers
from ssrr.losses import focal_loss
from ssrr.models.backbones import build_backbone
from ssrr.models.heads import RelationHead
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import Batch
from ssrr.pipelines.reference import ReferenceViews, reference_loader
from ssrr.precision import Execution, optimizer_step

COMPOSE_TOLERANCE = 0.2  # the whole may fall this far short of the parts' serial composition before it is suspect


def baseline_step(
    backbone: str, k: int, execution: Execution | None = None, channels_last: bool = False
) -> tuple[Callable[[Batch], None], nn.Module]:
    """The public implementation's training step and the backbone it trains, on the same device and in the same
    precision as ours (`execution`; float32 on the CPU when None), NCHW or `channels_last` (backbone and batch).
    Batches may come from the CPU."""
    execution = execution or Execution(torch.device("cpu"))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net = build_backbone(backbone).to(execution.device).to(memory_format=layout)
    head = RelationHead(net.feature_dim, "cat", fused=False).to(execution.device)
    optimizer = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-3)
    scaler = execution.grad_scaler()

    def step(batch: Batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        views = batch.views.to(execution.device, non_blocking=True).contiguous(memory_format=layout)
        with execution.autocast():
            logits, targets = literal_relation_logits(net(views), head, k, "cat")
        loss = focal_loss(logits.float(), targets)
        optimizer_step(loss, optimizer, scaler)
        if execution.device.type == "cuda":
            torch.cuda.synchronize(execution.device)

    return step, net


class Setting(NamedTuple):
    """One setting of the baseline a user would try."""

    workers: int  # DataLoader workers
    threads: int  # torch intra-op threads
    channels_last: bool  # the backbone and batches in channels_last (else NCHW)

    def record(self) -> dict[str, Any]:
        return self._asdict()


@dataclass(frozen=True)
class Timing:
    """How a figure was timed: the same for ours and the baseline."""

    warmup: int
    steps: int
    repeats: int


class Baseline:
    """The public-code pretraining of one dataset, backbone, K and M, on one device and precision."""

    def __init__(
        self,
        shard_dir: Path | str,
        backbone: str,
        k: int,
        m: int,
        execution: Execution,
        images: ReferenceViews | None = None,
    ) -> None:
        """`images`: the train split already in memory (another Baseline's, same shards and K), else read here."""
        self.shard_dir, self.backbone, self.k, self.m, self.execution = shard_dir, backbone, k, m, execution
        self.recipe = recipes.relational(k)
        self.images = images if images is not None else ReferenceViews(shard_dir, "train", self.recipe)

    def epoch(self, workers: int, seed: int) -> Iterator[Batch]:
        """One epoch of the reference loader, shuffled by `seed` (a new DataLoader, as the public code)."""
        return reference_loader(
            self.shard_dir, self.recipe, batch_size=self.m, workers=workers, seed=seed, dataset=self.images
        )

    def batches(self, workers: int, seed: int) -> Iterator[Batch]:
        """Endless batches: epoch after epoch."""
        epoch = 0
        while True:
            yield from self.epoch(workers, seed * 1000 + epoch)
            epoch += 1

    def views_per_s(self, setting: Setting, timing: Timing, first_seed: int = 0) -> list[float]:
        """Loader + step end to end, one figure per repeat (a fresh loader each repeat)."""
        runs = []
        with intra_op_threads(setting.threads):
            step = baseline_step(self.backbone, self.k, self.execution, setting.channels_last)[0]
            for repeat in range(timing.repeats):
                batches = self.batches(setting.workers, seed=first_seed + repeat)
                seconds = timed_steps(batches, step, timing.warmup, timing.steps)[0]
                batches.close()  # type: ignore[attr-defined]
                runs.append(timing.steps * self.k * self.m / seconds)
        return runs

    def loader_views_per_s(self, workers: int, timing: Timing) -> float:
        """The loader alone (nothing consumes the batches): what the step could at most be fed."""
        batches = self.batches(workers, seed=0)
        seconds = timed_steps(batches, lambda batch: None, max(timing.warmup, workers), timing.steps)[0]
        batches.close()  # type: ignore[attr-defined]
        return timing.steps * self.k * self.m / seconds

    def step_s(self, setting: Setting, timing: Timing) -> float:
        """The step alone on one batch already in memory: median seconds."""
        batch = next(self.batches(0, seed=0))
        with intra_op_threads(setting.threads):
            step = baseline_step(self.backbone, self.k, self.execution, setting.channels_last)[0]
            return median_step_s(step, batch, timing.warmup, timing.steps)


def grid(max_workers: int | None = None, max_threads: int | None = None) -> list[Setting]:
    """Settings a user would try: workers 0..min(8, cores), threads 1..cores, NCHW and channels_last."""
    workers = range(0, (max_workers if max_workers is not None else default_workers()) + 1)
    threads = range(1, (max_threads or cores()) + 1)
    return [Setting(w, t, last) for w in workers for t in threads for last in (False, True)]


class Timed(Protocol):
    """A side that times end-to-end views/s under a setting: `Baseline`, or the authors' own code
    (`ssrr.bench.authors_code.AuthorsCode`)."""

    def views_per_s(self, setting: Setting, timing: Timing, first_seed: int = 0) -> list[float]: ...


def best_setting(baseline: Timed, probe: Timing, settings: list[Setting]) -> tuple[list[dict[str, Any]], Setting]:
    """Every setting probed briefly end to end: the figures, and the fastest setting."""
    tried: list[dict[str, Any]] = []
    for setting in settings:
        rate = statistics.median(baseline.views_per_s(setting, probe))
        tried.append({**setting.record(), "views_per_s": rate})
    best = max(tried, key=lambda row: row["views_per_s"])
    return tried, Setting(int(best["workers"]), int(best["threads"]), bool(best["channels_last"]))


def baseline_parts(baseline: Baseline, setting: Setting, timing: Timing, runs: list[float]) -> dict[str, Any]:
    """The best setting's parts (its loader alone, its step alone) beside its end-to-end `runs`, and whether they
    compose. Returns the `baseline_*` fields of a benchmark result (without the settings)."""
    combined = statistics.median(runs)
    loader = baseline.loader_views_per_s(setting.workers, timing)
    step_s = baseline.step_s(setting, timing)
    step_rate = baseline.k * baseline.m / step_s
    serial = 1 / (1 / loader + 1 / step_rate)  # the loader and the step one after the other (workers=0)
    overlapped = min(loader, step_rate)  # perfectly overlapped (workers on free cores)
    suspect = combined < (1 - COMPOSE_TOLERANCE) * serial or combined > (1 + COMPOSE_TOLERANCE) * overlapped
    return {
        "baseline_views_per_s": combined,
        "baseline_runs": runs,
        "baseline_loader_views_per_s": loader,
        "baseline_step_s": step_s,
        "baseline_parts_predict": {"serial_views_per_s": serial, "overlapped_views_per_s": overlapped},
        "baseline_suspect": suspect,
    }
