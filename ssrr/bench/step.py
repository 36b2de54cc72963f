"""Step benchmarks, model only (no data pipeline): the relation stage, and one full training step.

`bench_relation_stage` times forward + backward of aggregation + relation head + focal loss on random
representations: the vectorised stage (`ssrr.relational.relation_logits`, the fused relation head) against the
literal transcription of Algorithm 1 (`ssrr.bench.literal`, the public code's Python pair loop), interleaved in
one run.

`bench_model_step` times one training step on a random input already in memory: backbone forward, relation
stage, focal loss, backward, Adam step; and, in the same run, the step the public code would take (float32,
contiguous memory format, literal pair loop, unfused head) as `baseline_step_s`.

Timings: the first call of each variant (warm-up) is excluded; the result is the median over `repeats`
(interleaved between variants, so that a noisy shared machine hits all of them alike); `*_min_s` gives the
fastest repeat too.

CPU notes (measured on the 2-core AMD EPYC (Zen 3, AVX2, no AVX-512/bf16) this project runs on):
- glibc returns every large freed block to the kernel, so each step page-faults its activation buffers afresh;
  `ssrr.hardware.tune_cpu_allocator()` keeps freed memory in the heap (about a third off a conv4 step). It is
  process-wide; the benchmarks apply it by default, so ours and the baseline both run under it, as training
  does.
- bf16 autocast only pays where the CPU has native bf16 (AVX-512-BF16 / AMX); on an AVX2 CPU it is emulated
  and several times slower than float32. `precision="auto"` means bf16 autocast where it is native, float32
  elsewhere (as the trainer's `--amp`); the result's "precision" says what ran.
- channels_last is faster than contiguous in float32 too (one thread, forward + backward: conv4 on 1,024
  images 0.26-0.31 s against 0.42-0.46 s; resnet32 on 256 images 2.3-2.6 s against 3.0-3.4 s).
- `compile=True` (torch.compile of the backbone) took a conv4 K=32 step from 0.74 to 0.58 s on one thread and
  from 0.50 to 0.38 s (median; best 0.27 s) on two, after ~36 s of compilation (~10 s from inductor's cache).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from ssrr.bench.literal import literal_relation_logits
from ssrr.devices import choose_device
from ssrr.hardware import tune_cpu_allocator
from ssrr.losses import focal_loss
from ssrr.models.backbones import build_backbone
from ssrr.models.heads import RelationHead
from ssrr.precision import Execution
from ssrr.precision import resolve as resolve_precision
from ssrr.relational import pair_schedule, relation_logits

__all__ = ["bench_model_step", "bench_relation_stage"]


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[int]:
    """Temporarily run intra-op work on `threads` threads (None: leave as is); yields the count in use."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(
    variants: dict[str, Callable[[], Any]], repeats: dict[str, int], device: torch.device
) -> dict[str, list[float]]:
    """Warm every variant up once, then time them round-robin; each variant runs repeats[name] times."""
    for fn in variants.values():
        fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(max(repeats.values())):
        for name, fn in variants.items():
            if r >= repeats[name]:
                continue
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def bench_relation_stage(
    k: int = 32,
    m: int = 64,
    d: int = 64,
    repeats: int = 5,
    aggregation: str = "cat",
    literal_repeats: int | None = None,
    device: str = "cpu",
    tune_allocator: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Forward + backward of aggregation + relation head + focal loss on random z (K*M, d), float32: the
    vectorised stage against the literal Algorithm 1 loop, side by side.

    Returns relation_fast_s, relation_literal_s (medians), their *_min_s, relation_speedup (literal / fast
    medians), pairs, and the settings. `threads`: intra-op threads for the timing (None: as set)."""
    if tune_allocator and device == "cpu":
        tune_cpu_allocator()
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    z0 = torch.randn(k * m, d, generator=gen).to(dev)
    schedule = pair_schedule(k, m, dev)
    _ = schedule.plan  # built once, cached with the schedule (not part of a step)
    torch.manual_seed(seed)
    head = RelationHead(d, aggregation).to(dev)

    def fast() -> None:
        z = z0.clone().requires_grad_()
        loss = focal_loss(relation_logits(z, head, schedule), schedule.targets)
        loss.backward()

    def literal() -> None:
        z = z0.clone().requires_grad_()
        logits, targets = literal_relation_logits(z, head, k, aggregation)
        loss = focal_loss(logits, targets.to(dev))
        loss.backward()

    with intra_op_threads(threads) as used_threads:
        times = _interleaved(
            {"fast": fast, "literal": literal}, {"fast": repeats, "literal": literal_repeats or repeats}, dev
        )
    fast_s = statistics.median(times["fast"])
    literal_s = statistics.median(times["literal"])
    return {
        "relation_fast_s": fast_s,
        "relation_literal_s": literal_s,
        "relation_speedup": literal_s / fast_s,
        "relation_fast_min_s": min(times["fast"]),
        "relation_literal_min_s": min(times["literal"]),
        "pairs": schedule.num_pairs,
        "k": k,
        "m": m,
        "d": d,
        "aggregation": aggregation,
        "device": str(dev),
        "threads": used_threads,
    }


def _make_step(
    backbone: str,
    k: int,
    m: int,
    image_size: int,
    execution: Execution,
    compile: bool,
    literal: bool,
    aggregation: str,
    seed: int,
) -> Callable[[], float]:
    torch.manual_seed(seed)
    device = execution.device
    net = execution.prepare(build_backbone(backbone))
    head = RelationHead(net.feature_dim, aggregation, fused=not literal).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = execution.inputs(torch.randn(k * m, 3, image_size, image_size, generator=gen))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(net) if compile else net  # type: ignore[assignment]
    schedule = pair_schedule(k, m, device)
    _ = schedule.plan
    targets = schedule.targets

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with execution.autocast():
            z = forward(x)
            if literal:
                logits, _ = literal_relation_logits(z, head, k, aggregation)
            else:
                logits = relation_logits(z, head, schedule)
        loss = focal_loss(logits.float(), targets)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def bench_model_step(
    backbone: str = "conv4",
    k: int = 32,
    m: int = 64,
    precision: str = "auto",
    channels_last: bool = True,
    compile: bool = False,
    repeats: int = 3,
    baseline: bool = True,
    baseline_repeats: int = 1,
    image_size: int = 32,
    aggregation: str = "cat",
    device: str = "cpu",
    tune_allocator: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """One full training step, model only, on a random (K*M, 3, S, S) input already in memory.

    Ours: backbone forward under `precision` (`auto`: bf16 where native to the device), the vectorised relation
    stage with the fused head (float32), focal loss, backward, Adam. Baseline (`baseline=True` and
    `baseline_repeats` > 0; timed in the same run, interleaved, after one warm-up step of its own): the same
    device and precision, the literal pair loop and the plain head, as the public code, in NCHW and in
    channels_last (a flag its users can set): the faster is the baseline, both are in `baseline_settings`.
    Returns step_s, views_per_s, pairs_per_s, step_min_s, baseline_step_s, baseline_views_per_s, step_speedup
    (baseline / ours) and the settings (precision resolved). `threads`: intra-op threads (None: as set)."""
    dev = choose_device(device)  # the one device rule (ssrr/devices.py): cuda without a usable GPU is refused
    tuned = tune_cpu_allocator() if tune_allocator and dev.type == "cpu" else False
    execution = resolve_precision(precision, dev, channels_last=channels_last)
    repeats = max(1, repeats)
    baseline = baseline and baseline_repeats > 0
    variants = {"step": _make_step(backbone, k, m, image_size, execution, compile, False, aggregation, seed)}
    counts = {"step": repeats}
    if baseline:
        for layout in (False, True):
            literal = replace(execution, channels_last=layout)
            variants[_BASELINES[layout]] = _make_step(
                backbone, k, m, image_size, literal, False, True, aggregation, seed
            )
            counts[_BASELINES[layout]] = baseline_repeats
    with intra_op_threads(threads) as used_threads:
        times = _interleaved(variants, counts, dev)
    step_s = statistics.median(times["step"])
    views = k * m
    pairs = m * k * (k - 1)
    out: dict[str, Any] = {
        "step_s": step_s,
        "step_min_s": min(times["step"]),
        "views_per_s": views / step_s,
        "pairs_per_s": pairs / step_s,
        "backbone": backbone,
        "k": k,
        "m": m,
        "image_size": image_size,
        "amp": execution.precision != "fp32",
        **execution.record(),
        "channels_last": channels_last,
        "compile": compile,
        "aggregation": aggregation,
        "device": str(dev),
        "threads": used_threads,
        "allocator_tuned": tuned,
        "repeats": repeats,
    }
    if baseline:
        tried = [
            {"channels_last": layout, "step_s": statistics.median(times[name])} for layout, name in _BASELINES.items()
        ]
        best = min(tried, key=lambda row: row["step_s"])
        base_s = best["step_s"]
        out.update(
            baseline_step_s=base_s,
            baseline_views_per_s=views / base_s,
            step_speedup=base_s / step_s,
            baseline_repeats=baseline_repeats,
            baseline_settings={"best": {"channels_last": best["channels_last"]}, "tried": tried},
        )
    return out


_BASELINES = {False: "baseline", True: "baseline-channels-last"}  # the public code's step in either memory format
