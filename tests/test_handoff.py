"""The hand-off from DALI to torch (pipelines/handoff.py), the epoch prepared in the background (ViewLoader.prepare)
and the display's reads without a sync (records.LaggedSums): on the CPU here, and on the GPU under torch's sync
debug mode set to error (`pytest -m gpu`), where a training step and the batches feeding it may not sync."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
from ssrr.pipelines import recipes
from ssrr.pipelines.handoff import HeldOutputs, as_torch
from ssrr.pipelines.loader import ViewLoader

from ssrr.config import RunConfig
from ssrr.train.records import LaggedSums


def test_as_torch_is_a_zero_copy_view_of_dali_memory() -> None:
    from nvidia.dali import tensors

    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    dali_list = tensors.TensorListCPU(data)
    tensor = as_torch(dali_list)
    assert torch.equal(tensor, torch.from_numpy(data))
    assert tensor.data_ptr() == np.asarray(dali_list.as_tensor()).__array_interface__["data"][0]
    held = HeldOutputs()
    held.hold(dali_list, torch.device("cpu"))
    assert len(held) == 0  # the CPU's copies are done when queued: nothing to hold


def test_a_prepared_epoch_gives_the_same_batches(tiny_shards: Path) -> None:
    recipe = recipes.relational(2)
    plain = ViewLoader(tiny_shards, recipe, batch_size=16, steps_per_run=2, seed=3)
    ahead = ViewLoader(tiny_shards, recipe, batch_size=16, steps_per_run=2, seed=3)
    ahead.prepare(1)
    ahead.prepare(1)  # again: kept, not rebuilt
    assert list(ahead._prepared) == [1]
    first = [b.views.clone() for b in ahead.epoch(0)]
    assert list(ahead._prepared) == [1]  # epoch 0 left epoch 1's pipeline alone
    for a, b in zip(ahead.epoch(1), plain.epoch(1), strict=True):
        assert torch.equal(a.views, b.views) and torch.equal(a.index, b.index) and a.valid.all()
    assert not ahead._prepared
    assert len(first) == len(plain)
    ahead.prepare(2, image_size=24)  # prepared at another size than the epoch runs at: rebuilt, same batches
    for a, b in zip(ahead.epoch(2), plain.epoch(2), strict=True):
        assert a.views.shape[-1] == 32 and torch.equal(a.views, b.views)


def test_lagged_sums_on_the_cpu_are_read_at_once() -> None:
    lagged = LaggedSums(torch.device("cpu"))
    assert lagged.latest() == ({}, 0)
    lagged.request({"loss": torch.tensor(3.0), "acc": torch.tensor(1.5)}, 3)
    assert lagged.latest() == ({"acc": 1.5, "loss": 3.0}, 3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_training_steps_and_their_batches_do_not_sync_the_host(tiny_shards: Path, tmp_path: Path, device: str) -> None:
    """Under torch.cuda.set_sync_debug_mode("error") every host synchronisation raises: six steps (crossing a
    pipeline run) of the real loop's step, the batches handed to them and the display's reads run without one.
    On the CPU (no such mode) the same code runs, so CI keeps the GPU test's calls in step with the library."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from ssrr.train.loop import EpochTally, _train_step
    from ssrr.train.setup import set_up

    config = RunConfig(
        dataset=str(tiny_shards), backbone="conv4", k=4, batch=16, epochs=1, precision="auto", device=device,
        out=str(tmp_path), name="syncs",
    )  # fmt: skip
    with ExitStack() as closing:
        t = set_up(config, resume=False, show=False, closing=closing)
        batches = iter(t.loader.epoch(0))
        step = lambda batch: _train_step(  # noqa: E731
            t.accelerator, t.execution, t.model, batch, t.optimizer, t.scheduler, t.scaler
        )
        step(next(batches))  # warm-up: the pair schedule and the optimizer state are made (and copied) once
        _synchronize(device)
        tally, lagged = EpochTally(t.device), LaggedSums(t.device)
        _sync_debug(device, "error")
        try:
            for _ in range(6):
                tally.add(step(next(batches)))
                lagged.request(tally.sums, tally.counted)
                lagged.latest()
        finally:
            _sync_debug(device, 0)
        _synchronize(device)
    assert tally.counted == 6 and np.isfinite(float(tally.sums["loss"]))
    assert lagged.latest()[1] >= 1


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _sync_debug(device: str, mode: str | int) -> None:
    if device == "cuda":
        torch.cuda.set_sync_debug_mode(mode)
