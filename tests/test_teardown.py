"""How runs end (issue 31): the loaders' DALI threads and the process group are closed in a defined order before
`pretrain` returns or raises, on success, on error and on Ctrl-C; Ctrl-C stops at a step boundary with a
resumable checkpoint and one line; `ssrr eval` and `ssrr bench` close their pipelines and say one line too."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from accelerate.state import AcceleratorState
from fixtures_data import run_config
from safetensors.torch import load_file
from ssrr.cli.app import _mount, app
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import ViewLoader
from typer.testing import CliRunner

from ssrr.errors import Interrupted, SsrrError
from ssrr.train import checkpoint as ckpt
from ssrr.train import loop
from ssrr.train.checkpoint import list_checkpoints

NATIVE = ("DALI", "PrefetchWorker", "gloo")  # the worker threads of DALI pipelines and of a gloo process group


def native_threads() -> list[str]:
    """Names of this process's DALI and gloo threads (native threads: invisible to `threading`)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # ended meanwhile
            continue
        if any(word in name for word in NATIVE):
            names.append(name)
    return sorted(names)


config = partial(run_config, k=2)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(list_checkpoints(run_dir)[-1] / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


# ---------------------------------------------------------------------------------------------------- loader


def test_close_stops_a_pipeline_in_the_middle_of_an_epoch_and_is_idempotent(tiny_shards: Path) -> None:
    before = native_threads()
    with ViewLoader(tiny_shards, recipes.evaluation(), batch_size=32, num_threads=1) as loader:
        batches = loader.epoch(0)
        next(batches)
        assert len(native_threads()) > len(before), "a running pipeline has DALI threads"
    # the generator is still referenced, suspended mid-epoch: close() stopped its pipeline anyway
    assert native_threads() == before
    with pytest.raises(SsrrError, match="closed during the epoch"):
        list(batches)
    loader.close()  # again: nothing to do
    with pytest.raises(SsrrError, match="closed"):
        next(iter(loader.epoch(1)))


# ---------------------------------------------------------------------------------------------------- pretrain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def one_rank_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment `accelerate launch` gives a rank: the run's Accelerator creates a gloo process group
    (one rank) and the run is meant to destroy it."""
    for key, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    if dist.is_initialized():  # a failed test must not leave its group to the next one
        dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_run_ends_with_its_pipelines_stopped_and_its_process_group_destroyed(
    tiny_shards: Path, tmp_path: Path, one_rank_group: None
) -> None:
    result = loop.pretrain(config(tiny_shards, tmp_path, epochs=1), show=False)
    environment = (result.run_dir / "environment.json").read_text()
    assert "MULTI_CPU" in environment, "the run did not run on a process group"
    assert not dist.is_initialized()
    assert native_threads() == []


def test_a_failing_run_still_closes_everything(
    tiny_shards: Path, tmp_path: Path, one_rank_group: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom in a step")

    monkeypatch.setattr(loop, "_train_step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        loop.pretrain(config(tiny_shards, tmp_path), show=False)
    assert not dist.is_initialized()
    assert native_threads() == []


def test_a_process_group_made_by_the_caller_is_left_to_the_caller(
    tiny_shards: Path, tmp_path: Path, one_rank_group: None
) -> None:
    dist.init_process_group("gloo", rank=0, world_size=1)
    loop.pretrain(config(tiny_shards, tmp_path, epochs=1), show=False)
    assert dist.is_initialized()


@pytest.fixture(scope="module")
def straight(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-epoch run: what every interrupted and resumed run must end with, bit for bit."""
    return loop.pretrain(config(tiny_shards, tmp_path_factory.mktemp("straight")), show=False).run_dir


@pytest.fixture
def python_sigint() -> Iterator[None]:
    """Python's own Ctrl-C handler for the test, whatever the test process inherited: a suite started in the
    background (`nohup`, `cmd &` in a script) ignores SIGINT, and the run rightly keeps an ignored SIGINT."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int, presses: int) -> None:
    """Ctrl-C `presses` times (real SIGINTs to this process) during optimizer step `step` (1-based)."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "use the python_sigint fixture"
    real = loop._train_step
    taken = [0]

    def step_then_interrupt(*args, **kwargs):
        taken[0] += 1
        if taken[0] == step:
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", step_then_interrupt)


def test_ctrl_c_stops_at_the_step_boundary_with_a_checkpoint_that_resumes_exactly(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, straight: Path, python_sigint: None
) -> None:
    interrupt_at(monkeypatch, step=11, presses=1)  # 8 steps an epoch: the middle of epoch 2
    with pytest.raises(Interrupted, match=r"^interrupted at step 11; checkpoint step-00000011 saved in .*--resume$"):
        loop.pretrain(config(tiny_shards, tmp_path / "b"), show=False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler was not given back"
    assert native_threads() == []
    monkeypatch.undo()
    resumed = loop.pretrain(config(tiny_shards, tmp_path / "b"), resume=True, show=False)
    assert_same_weights(straight, resumed.run_dir)


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_stays_intact(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, straight: Path, python_sigint: None
) -> None:
    interrupt_at(monkeypatch, step=11, presses=2)
    with pytest.raises(Interrupted, match=r"^interrupted at step 10; checkpoint step-00000008 is intact in "):
        loop.pretrain(config(tiny_shards, tmp_path / "b"), show=False)
    assert native_threads() == []
    monkeypatch.undo()
    resumed = loop.pretrain(config(tiny_shards, tmp_path / "b"), resume=True, show=False)
    assert_same_weights(straight, resumed.run_dir)


def test_ctrl_c_while_a_checkpoint_is_written_keeps_the_previous_one(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, straight: Path
) -> None:
    real = ckpt.save_state

    def interrupted_write(folder: Path, state: dict) -> None:
        if state["step"] == 16:  # the second checkpoint: its weights are written, its state is not
            raise KeyboardInterrupt
        real(folder, state)

    monkeypatch.setattr(ckpt, "save_state", interrupted_write)
    with pytest.raises(Interrupted, match="checkpoint step-00000008 is intact"):
        loop.pretrain(config(tiny_shards, tmp_path / "b"), show=False)
    run = tmp_path / "b" / "run"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000008"], "a half-written one was left"
    monkeypatch.undo()
    resumed = loop.pretrain(config(tiny_shards, tmp_path / "b"), resume=True, show=False)
    assert_same_weights(straight, resumed.run_dir)


# ---------------------------------------------------------------------------------------------------- CLI


def test_ctrl_c_in_eval_and_bench_is_one_line_and_exit_130(
    tiny_shards: Path, monkeypatch: pytest.MonkeyPatch, straight: Path
) -> None:
    import ssrr.eval.features as features

    real = features.embed
    calls = [0]

    def interrupted_embed(*args, **kwargs):  # Ctrl-C in the middle of the feature pass
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(features, "embed", interrupted_embed)
    _mount()
    runner = CliRunner()
    done = runner.invoke(app, ["eval", "knn", str(straight), "--dataset", str(tiny_shards)])
    assert done.exit_code == 130, done.output
    assert done.output.strip() == "interrupted: ssrr eval stopped before it finished"
    assert native_threads() == [], "the feature pass left its pipeline running"

    def interrupted_steps(batches, *args, **kwargs):  # Ctrl-C once the pipeline runs
        next(batches)
        raise KeyboardInterrupt

    monkeypatch.setattr("ssrr.bench.e2e.timed_steps", interrupted_steps)
    bench = ["bench", "e2e", "--dataset", str(tiny_shards), "--backbone", "conv4", "--k", "2", "--batch", "16"]
    done = runner.invoke(app, bench)
    assert done.exit_code == 130, done.output
    assert done.output.strip() == "interrupted: ssrr bench stopped before it finished"
    assert native_threads() == []
