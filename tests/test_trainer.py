"""The pretraining loop: run folder contents, exact stop/resume, errors, loading the backbone back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fixtures_data import run_config
from safetensors.torch import load_file

from ssrr.config import RunConfig
from ssrr.errors import SsrrError
from ssrr.train.checkpoint import list_checkpoints, load_backbone
from ssrr.train.loop import pretrain
from ssrr.train.records import projected_run_s, total_steps

config = run_config


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(list_checkpoints(run_dir)[-1] / "model.safetensors"))


def test_run_folder_holds_config_environment_metrics_and_checkpoints(tiny_shards: Path, tmp_path: Path) -> None:
    result = pretrain(config(tiny_shards, tmp_path, keep_checkpoints=1), show=False)
    run = result.run_dir
    assert RunConfig.load(run).k == 3
    assert json.loads((run / "environment.json").read_text())["num_processes"] == 1
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for key in ("loss", "acc_pos", "acc_neg", "views_per_s", "images_per_s", "pairs_per_s", "data_wait"):
        assert key in lines[-1]
    assert 0.0 <= lines[-1]["data_wait"] <= 1.0
    throughput = json.loads((run / "throughput.json").read_text())
    assert throughput["views_per_s"] == pytest.approx(3 * throughput["images_per_s"])
    assert len(list_checkpoints(run)) == 1  # keep_checkpoints=1 pruned the first
    assert result.steps == 2 * (256 // 32)


def test_stop_and_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_shards: Path, tmp_path: Path) -> None:
    straight = pretrain(config(tiny_shards, tmp_path / "a"), show=False)
    pretrain(config(tiny_shards, tmp_path / "b", epochs=1), show=False)  # stopped after epoch 1
    resumed = pretrain(config(tiny_shards, tmp_path / "b"), resume=True, show=False)
    a, b = weights(straight.run_dir), weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 2  # the log was appended, not recreated


def test_resume_from_the_middle_of_an_epoch_is_exact(tiny_shards: Path, tmp_path: Path) -> None:
    straight = pretrain(config(tiny_shards, tmp_path / "a", epochs=1), show=False)
    pretrain(config(tiny_shards, tmp_path / "b", epochs=1, max_steps=3), show=False)
    resumed = pretrain(config(tiny_shards, tmp_path / "b", epochs=1, max_steps=None), resume=True, show=False)
    a, b = weights(straight.run_dir), weights(resumed.run_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_an_existing_run_is_never_overwritten(tiny_shards: Path, tmp_path: Path) -> None:
    pretrain(config(tiny_shards, tmp_path, epochs=1), show=False)
    with pytest.raises(SsrrError, match="already exists"):
        pretrain(config(tiny_shards, tmp_path, epochs=1), show=False)


def test_resuming_with_another_model_is_refused(tiny_shards: Path, tmp_path: Path) -> None:
    pretrain(config(tiny_shards, tmp_path, epochs=1), show=False)
    with pytest.raises(SsrrError, match="another model"):
        pretrain(config(tiny_shards, tmp_path, backbone="resnet8"), resume=True, show=False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 1}, "--k must be >= 2"),
        ({"batch": 1}, "--batch must be >= 2"),
        ({"backbone": "vgg"}, "unknown backbone"),
        ({"aggregation": "median"}, "aggregation"),
        ({"dataset": "no-such-dataset"}, "ssrr shard no-such-dataset"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(tiny_shards: Path, tmp_path: Path, changes, message) -> None:
    with pytest.raises(SsrrError, match=message) as caught:
        pretrain(config(tiny_shards, tmp_path, **changes), show=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_backbone_loads_back_for_evaluation_and_refuses_another(tiny_shards: Path, tmp_path: Path) -> None:
    result = pretrain(config(tiny_shards, tmp_path, epochs=1), show=False)
    loaded = load_backbone(result.run_dir)
    assert loaded.name == "conv4"
    saved = load_file(str(result.run_dir / "backbone.safetensors"))
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, saved[key])
    with pytest.raises(SsrrError, match="conv4 checkpoint, not resnet32"):
        load_backbone(result.run_dir, backbone="resnet32")


def test_pretraining_on_train_plus_unlabeled_reads_both_splits(with_unlabeled: Path, tmp_path: Path) -> None:
    """STL-10's pretraining set: 40 labelled + 60 unlabelled images, 6 steps of 16 an epoch, unique indices."""
    run = pretrain(
        config(with_unlabeled, tmp_path, split="train+unlabeled", batch=16, epochs=1, log_samples=True), show=False
    )
    assert run.steps == 100 // 16 and RunConfig.load(run.run_dir).split == "train+unlabeled"
    logged = [json.loads(line)[1] for line in (run.run_dir / "samples-rank0.jsonl").read_text().splitlines()]
    indices = [i for step in logged for i in step]
    assert len(indices) == len(set(indices)) == 96 and max(indices) >= 40  # unlabelled ones numbered after train
    with pytest.raises(SsrrError, match="split train\\+unlabeled is not all labelled; --method supervised"):
        pretrain(config(with_unlabeled, tmp_path, method="supervised", split="train+unlabeled", name="s"), show=False)


@pytest.mark.parametrize("head", ["dot", "encoder-dot"])
def test_head_ablation_runs_train_and_give_a_backbone(head: str, tiny_shards: Path, tmp_path: Path) -> None:
    """The seed's second table: the relational method with the dot and encoder-dot heads trains and saves."""
    run = pretrain(config(tiny_shards, tmp_path, head=head, epochs=1, max_steps=4, name=head), show=False)
    assert RunConfig.load(run.run_dir).head == head and run.steps == 4
    lines = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in lines)
    assert load_backbone(run.run_dir).name == "conv4"


def test_a_fresh_run_that_fails_before_its_first_checkpoint_leaves_nothing(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssrr.methods.base import Method

    def fail_at(epoch_to_fail: int):  # type: ignore[no-untyped-def]
        def on_epoch_start(self, context) -> None:  # type: ignore[no-untyped-def]
            if context.epoch == epoch_to_fail:
                raise RuntimeError("boom")

        return on_epoch_start

    monkeypatch.setattr(Method, "on_epoch_start", fail_at(0))
    with pytest.raises(RuntimeError, match="boom"):
        pretrain(config(tiny_shards, tmp_path, name="first"), show=False)
    assert not (tmp_path / "first").exists()
    monkeypatch.setattr(Method, "on_epoch_start", fail_at(1))  # after epoch 1's checkpoint: kept, resumable
    with pytest.raises(RuntimeError, match="boom"):
        pretrain(config(tiny_shards, tmp_path, name="second"), show=False)
    assert len(list_checkpoints(tmp_path / "second")) == 1
    monkeypatch.undo()
    resumed = pretrain(config(tiny_shards, tmp_path, name="second"), resume=True, show=False)
    assert resumed.epochs_done == 2


def test_deepcluster_without_enough_images_fails_before_writing(with_unlabeled: Path, tmp_path: Path) -> None:
    with pytest.raises(SsrrError, match="40 images, fewer than its k=50 clusters"):
        pretrain(config(with_unlabeled, tmp_path, method="deepcluster", batch=8, name="dc"), show=False)
    assert not (tmp_path / "dc").exists()


class CountingProbe:
    """A probe that records its calls and takes a known time (excluded from the pretraining clock)."""

    name = "fake_top1"

    def __init__(self, every: int, pause: float = 0.0) -> None:
        self.every, self.pause, self.calls = every, pause, 0

    def __call__(self, backbone, shard_dir, execution) -> float:  # type: ignore[no-untyped-def]
        import time

        self.calls += 1
        time.sleep(self.pause)
        return 10.0 * self.calls


def test_probes_run_every_n_epochs_and_after_the_last_beside_the_pretraining_time_without_their_own(
    tiny_shards: Path, tmp_path: Path
) -> None:
    probe = CountingProbe(every=2, pause=1.5)
    result = pretrain(config(tiny_shards, tmp_path, epochs=5), show=False, probes=[probe])
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert probe.calls == 3 and [line.get("fake_top1") for line in lines] == [None, 10.0, None, 20.0, 30.0]
    elapsed = [line["elapsed_s"] for line in lines]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    throughput = json.loads((result.run_dir / "throughput.json").read_text())
    assert elapsed[-1] < throughput["wall_s"] - 4.0  # the three 1.5 s probes are not pretraining time
    assert throughput["projected_run_s"] == pytest.approx(elapsed[-1], abs=1e-3)  # finished: its own time


def test_a_probe_every_n_steps_runs_within_epochs_in_lines_of_its_own_its_time_not_counted(
    tiny_shards: Path, tmp_path: Path
) -> None:
    probe = CountingProbe(every=0, pause=0.5)
    probe.every_steps = 3  # type: ignore[attr-defined]
    probe.split = "test"  # type: ignore[attr-defined]
    result = pretrain(config(tiny_shards, tmp_path, epochs=2), show=False, probes=[probe])  # 8 steps an epoch
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    probed = [(line["step"], line.get("probe_only", False)) for line in lines if "fake_top1" in line]
    assert probed == [(3, True), (6, True), (9, True), (12, True), (15, True), (16, False)]  # and after the last
    assert all(line["probe_split"] == "test" for line in lines if "fake_top1" in line)
    epochs = [line for line in lines if not line.get("probe_only")]
    assert [line["step"] for line in epochs] == [8, 16] and "fake_top1" not in epochs[0]
    throughput = json.loads((result.run_dir / "throughput.json").read_text())
    assert lines[-1]["elapsed_s"] < throughput["wall_s"] - 2.5  # the six 0.5 s probes are not pretraining time
    elapsed = [line["elapsed_s"] for line in lines]
    assert elapsed == sorted(elapsed)


def test_the_projected_time_follows_the_pace_of_the_steps_so_far() -> None:
    six_epochs = RunConfig(epochs=6)
    run_steps = total_steps(six_epochs, steps_per_epoch=8)
    assert projected_run_s(10.0, 4, run_steps) == pytest.approx(120.0)  # 4 of 48 steps
    assert projected_run_s(10.0, 4, total_steps(replace(six_epochs, max_steps=4), 8)) == pytest.approx(10.0)
    assert projected_run_s(0.0, 0, run_steps) is None  # nothing trained yet


def test_a_resumed_run_keeps_adding_up_its_pretraining_time(tiny_shards: Path, tmp_path: Path) -> None:
    first = pretrain(config(tiny_shards, tmp_path, epochs=1), show=False)
    before = json.loads((first.run_dir / "metrics.jsonl").read_text().splitlines()[-1])["elapsed_s"]
    pretrain(config(tiny_shards, tmp_path, epochs=2), resume=True, show=False)
    after = json.loads((first.run_dir / "metrics.jsonl").read_text().splitlines()[-1])["elapsed_s"]
    assert after > before


def test_a_compiled_run_saves_weights_under_the_plain_names(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Dynamo traces the backbone as --compile does; the eager backend skips the slow C++ code generation.
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="eager"))
    plain = pretrain(config(tiny_shards, tmp_path, epochs=1, name="plain"), show=False)
    compiled = pretrain(config(tiny_shards, tmp_path, epochs=1, name="compiled", compile=True), show=False)
    assert weights(compiled.run_dir).keys() == weights(plain.run_dir).keys()
    assert load_backbone(compiled.run_dir).name == "conv4"
