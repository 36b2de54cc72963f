"""`ssrr reproduce`: the seed's experiments listed, planned, run at the tiny scale, skipped when done, printed."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import error_lines, run_ssrr
from PIL import Image

from ssrr import experiments as ex
from ssrr.config import RunConfig
from ssrr.data.sources import load_dataset
from ssrr.data.writer import write_dataset
from ssrr.errors import SsrrError

RUN_LINE = re.compile(r"^(\S+)\s+(\S+)\s+(\S+)\s.*seed=(\d)\s+-> (.*)  \[([^\]]+)\]  (\S+)$")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded synthetic dataset, small: 20 train and 5 test images per class."""
    root = tmp_path_factory.mktemp("shards")
    write_dataset(load_dataset("synthetic", train_per_class=20, test_per_class=5), root)
    return root


def run_lines(output: str) -> list[re.Match[str]]:
    return [m for line in output.splitlines() if (m := RUN_LINE.match(line))]


def test_dry_run_lists_every_run_of_the_seed_tables(tmp_path: Path) -> None:
    result = run_ssrr(
        "reproduce", "paper", "--scale", "small", "--dry-run", "--runs", tmp_path / "runs", "--shards-root", tmp_path
    )
    assert result.exit_code == 0, result.output
    lines = run_lines(result.output)
    names = [m.group(7) for m in lines]
    # one line per run, each run once: 129 runs of the paper's rows, plus the standard forms of SimCLR and Deep
    # InfoMax (4 pretraining datasets x 3 seeds each) beside the authors' forms
    assert len(lines) == len(set(names)) == 129 + 2 * 4 * 3
    assert {m.group(1) for m in lines} == {*ex.METHODS, "random"}  # every method of table 1 (+ random weights)
    assert {m.group(4) for m in lines} == {"1", "2", "3"}
    assert {m.group(2) for m in lines} >= {"conv4", "resnet32", "resnet34"}
    text = "\n".join(m.group(0) for m in lines)
    for head in ex.HEADS:
        assert f"head={head} " in text
    for k in ex.K_VALUES:
        assert f"relational-resnet32-cifar10-k{k}-s1" in names
    assert "semi:cifar10@0.01,0.1,0.25,0.5,1" in text
    for evaluation in ("linear:tiny-imagenet", "linear:cifar100/coarse", "finetune:stl10"):
        assert evaluation in text
    pretrained_on = {(m.group(1), m.group(3)) for m in lines}
    for method in ex.METHODS:  # linear on each dataset, both transfer directions, fine-tune on STL-10
        assert {(method, d) for d in ("cifar10", "cifar100", "tiny-imagenet", "stl10")} <= pretrained_on
    for method in ex.SELF_SUPERVISED:
        assert f"{method}-conv4-cifar10" in text and f"{method}-conv4-cifar100" in text
    assert all(m.group(6).startswith("todo; missing shards") for m in lines)
    assert "153 runs (153 todo)" in result.output
    assert "loss=official" in text and "loss=nt-xent" in text and "prior=official" in text
    assert "`ssrr shard cifar10 --out" in result.output


def test_the_plan_shares_runs_between_tables_and_names_them_deterministically() -> None:
    plan = ex.plan("paper", "full")
    runs = {run.name: run for run in plan.runs}
    shared = runs["relational-resnet32-cifar100-k32-s1"]
    assert shared.tables == ["table1", "table2", "backbones"]
    assert [job.tag for job in shared.evaluations] == ["linear:cifar100", "linear:cifar10", "linear:cifar100/coarse"]
    assert shared.config is not None and (shared.config.epochs, shared.config.k, shared.config.batch) == (200, 32, 64)
    stl10 = runs["relational-resnet34-stl10-k32-s2"]
    assert stl10.config is not None and stl10.config.epochs == 300
    assert runs["relational-resnet32-cifar10-k32-encoder-dot-s3"].config.head == "encoder-dot"  # type: ignore[union-attr]
    assert runs["random-resnet32-s1"].config is None and runs["random-resnet32-s1"].source == "random:resnet32"
    assert ex.plan("paper", "full").runs == plan.runs  # deterministic
    assert {run.name for run in ex.plan("table2", "full").runs} <= set(runs)
    assert len(ex.plan("k", "full").runs) == len(ex.K_VALUES) * len(ex.SEEDS)


def test_result_file_names_match_the_evaluation_modules(tmp_path: Path) -> None:
    from ssrr.eval.common import result_stem
    from ssrr.eval.protocols import source_tag
    from ssrr.train.checkpoint import LoadedBackbone

    for args in (("linear", "cifar100", "coarse", 2), ("semi", "cifar10", "fine", 1), ("finetune", "stl10", "fine", 3)):
        assert ex.result_stem(*args) == result_stem(*args)
    # The stem a planned job waits for is the one `ssrr eval` writes for that run (or random backbone).
    for run in ex.plan("table2", "tiny", runs_dir=tmp_path).runs:
        job = run.evaluations[0]
        if run.config is not None:
            run.folder.mkdir(parents=True)
            run.config.save(run.folder)
        loaded = LoadedBackbone(torch.nn.Identity(), run.backbone, run.source, None, None)
        tag = source_tag(loaded)
        assert job.stem == result_stem(job.protocol, Path(job.dataset).name, job.labels, job.seed, "", tag)


def test_printed_pretrain_commands_make_exactly_the_planned_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssrr.train.loop

    captured: list[RunConfig] = []
    monkeypatch.setattr(ssrr.train.loop, "pretrain", lambda config, **_: captured.append(config))
    for run in ex.plan("table2", "tiny", runs_dir="somewhere").runs[:2]:
        assert run.config is not None
        result = run_ssrr("pretrain", *ex.pretrain_args(run.config))
        assert result.exit_code == 0, result.output
        assert captured[-1] == run.config


def test_tiny_run_makes_the_report_then_skips_everything_done(synthetic_root: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["reproduce", "paper", "--scale", "tiny", "--runs", runs, "--shards-root", synthetic_root, "--quiet"]
    first = run_ssrr(*args, "--only", "k4-s1")  # relational resnet8 and conv4, K=4, seed 1: every figure
    assert first.exit_code == 0, first.output
    report = runs / "report-paper"
    text = (report / "report.md").read_text()
    for title in ("Table 1", "Table 2", "Accuracy versus K", "available labels", "Conv4 versus ResNet-32"):
        assert title in text
    assert re.search(r"\| Relational Reasoning \| resnet8 \| \d+\.\d\d \|", text)
    assert (report / "table1.md").is_file() and json.loads((report / "report.json").read_text())["scale"] == "tiny"
    for name, size in (("accuracy-vs-k.png", (800, 500)), ("accuracy-vs-labels.png", (800, 500))):
        check_png(report / name, size)
    check_png(report / "backbones.png", (1000, 500))

    results = sorted(runs.rglob("eval/*.json"))
    assert len(results) == 4  # linear, finetune, semi on resnet8; linear on conv4 (the slots share the data)
    stamps = [p.stat().st_mtime_ns for p in results]
    started = time.perf_counter()
    again = run_ssrr(*args, "--only", "k4-s1")
    assert again.exit_code == 0, again.output
    assert time.perf_counter() - started < 30
    assert "0 pretrained, 0 evaluated, 2 runs done already" in again.output
    assert again.output.count(": done") == 2
    assert [p.stat().st_mtime_ns for p in results] == stamps

    dry = run_ssrr(
        "reproduce", "paper", "--scale", "tiny", "--runs", runs, "--shards-root", synthetic_root, "--dry-run"
    )
    states = {m.group(7): m.group(6) for m in run_lines(dry.output)}
    assert states["relational-resnet8-synthetic-k4-s1"] == "done"
    assert states["relational-resnet8-synthetic-k4-dot-s1"] == "todo"

    printed = run_ssrr(
        "reproduce", "table2", "--scale", "tiny", "--runs", runs, "--shards-root", synthetic_root, "--print-commands",
        "--launch", "accelerate launch --multi_gpu --num_processes 8",
    )  # fmt: skip
    assert printed.exit_code == 0, printed.output
    lines = printed.output.splitlines()
    assert "# relational-resnet8-synthetic-k4-s1: done" in lines
    launches = [line for line in lines if line.startswith("accelerate launch --multi_gpu --num_processes 8 -m ssrr ")]
    assert len(launches) == 5  # dot and encoder-dot heads at seeds 1 and 2, the relation head at seed 2
    assert all(" pretrain --method relational " in line and line.endswith(" --resume") for line in launches)
    assert any("--head encoder-dot" in line for line in launches)
    assert not any("relational-resnet8-synthetic-k4-s1 " in line for line in launches)
    assert any(line.startswith("ssrr eval linear ") and "--epochs 5" in line for line in lines)


def check_png(path: Path, size: tuple[int, int]) -> None:
    image = np.asarray(Image.open(path).convert("RGB"))
    assert (image.shape[1], image.shape[0]) == size, path
    assert image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 20, f"{path} looks blank"


def test_a_real_run_without_shards_is_one_line_naming_the_shard_command(tmp_path: Path) -> None:
    result = run_ssrr(
        "reproduce", "table2", "--scale", "tiny", "--runs", tmp_path / "runs", "--shards-root", tmp_path / "none"
    )
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert "missing shards for synthetic" in line and "`ssrr shard synthetic --out " in line
    assert not (tmp_path / "runs").exists()


def test_a_run_made_with_other_settings_is_a_conflict_never_overwritten(synthetic_root: Path, tmp_path: Path) -> None:
    plan = ex.plan("k", "tiny", runs_dir=tmp_path, shards_root=str(synthetic_root))
    run = plan.runs[0]
    assert run.config is not None
    other = RunConfig(**{**run.config.__dict__, "epochs": 7})
    other.save(run.folder)
    state = ex.status(run)
    assert state.word == "conflict" and "epochs: 7 != 1" in state.conflict
    with pytest.raises(SsrrError, match=r"other settings.*epochs: 7 != 1") as caught:
        ex.execute(plan, plan.runs, show=False, log=lambda _: None)
    assert "\n" not in str(caught.value)
    assert RunConfig.load(run.folder).epochs == 7


def test_completion_rules(synthetic_root: Path, tmp_path: Path) -> None:
    """done needs the configured epochs (or max_steps) and the backbone; results need the planned epochs and
    must be newer than the backbone."""
    plan = ex.plan("k", "tiny", runs_dir=tmp_path, shards_root=str(synthetic_root))
    run = plan.runs[0]
    assert run.config is not None
    assert ex.status(run).word == "todo"
    run.config.save(run.folder)
    (run.folder / "throughput.json").write_text(json.dumps({"epochs": 0, "steps": 3}))
    (run.folder / "backbone.safetensors").write_bytes(b"")
    assert ex.pretrain_status(run)[0] == "partial"
    (run.folder / "throughput.json").write_text(json.dumps({"epochs": 0, "steps": 10}))  # max_steps reached
    assert ex.pretrain_status(run)[0] == "done"
    (job,) = run.evaluations
    assert ex.status(run).word == "partial"
    job.out_dir.mkdir()
    job.result.write_text(json.dumps({"protocol": "linear", "epochs": 5, "top1": 50.0}))
    assert ex.status(run).word == "done"
    (run.folder / "backbone.safetensors").write_bytes(b"newer")  # the run was trained further: stale result
    later = job.result.stat().st_mtime + 5
    os.utime(run.folder / "backbone.safetensors", (later, later))
    assert ex.status(run).evaluations == ["todo"]
    job.result.write_text(json.dumps({"protocol": "linear", "epochs": 100, "top1": 50.0}))
    os.utime(job.result, (later + 1, later + 1))
    assert ex.status(run).word == "conflict"


def test_unknown_names_and_scales_are_one_line(tmp_path: Path) -> None:
    for args, message in ((("tables3",), "unknown experiment 'tables3'"), (("paper", "--scale", "huge"), "--scale")):
        result = run_ssrr("reproduce", *args, "--dry-run", "--runs", tmp_path)
        assert result.exit_code == 1
        (line,) = error_lines(result)
        assert message in line


def test_only_selects_runs_by_name(tmp_path: Path) -> None:
    plan = ex.plan("paper", "small", runs_dir=tmp_path)
    chosen = plan.selected(["encoder-dot-s2,k16"])
    assert {run.name for run in chosen} == {
        "relational-resnet32-cifar10-k32-encoder-dot-s2",
        "relational-resnet32-cifar100-k32-encoder-dot-s2",
        *(f"relational-resnet32-cifar10-k16-s{s}" for s in ex.SEEDS),
    }


def test_a_remote_shards_root_is_not_missing_data(tmp_path: Path) -> None:
    result = run_ssrr(
        "reproduce", "k", "--scale", "tiny", "--dry-run", "--runs", tmp_path, "--shards-root", "https://example.org/s"
    )
    assert result.exit_code == 0, result.output
    assert "missing" not in result.output


def test_stl10_self_supervised_runs_pretrain_on_unlabeled_only() -> None:
    """As the authors' code (issue 13): the 100k unlabeled images; supervised has labels for train only."""
    runs = {run.name: run for run in ex.plan("table1", "full", runs_dir="somewhere").runs}
    stl = {name: run.config for name, run in runs.items() if run.config and "stl10" in name}
    assert stl and all(config is not None for config in stl.values())
    for config in stl.values():
        assert config is not None
        expected = "train" if config.method == "supervised" else "unlabeled"
        assert config.split == expected, config.name
        args = ex.pretrain_args(config)
        assert ("--split" in args) == (expected != "train")
    tiny = [run.config for run in ex.plan("table1", "tiny", runs_dir="somewhere").runs if run.config]
    assert {config.split for config in tiny} == {"train"}  # the stand-in synthetic data has no unlabeled split


def test_the_tables_run_the_authors_forms_and_add_the_standard_forms_as_rows(tmp_path: Path) -> None:
    from ssrr.experiments.planning import plan

    runs = {run.name: run for run in plan("table1", "small", runs_dir=tmp_path, shards_root=str(tmp_path)).runs}
    simclr = [run for run in runs.values() if run.method == "simclr" and run.seed == 1]
    infomax = [run for run in runs.values() if run.method == "infomax" and run.seed == 1]
    assert {str(run.config.method_options) for run in simclr if run.config} == {
        "{'loss': 'official'}",  # the authors' -log of the mean p: the default row
        "{'loss': 'nt-xent'}",  # the standard NT-Xent: its own row and run name
    }
    assert {run.config.method_options["prior"] for run in infomax if run.config} == {"official", "adversarial"}
    standard = [name for name, run in runs.items() if run.config and run.config.method_options.get("loss") == "nt-xent"]
    assert standard and all("-standard-" in name for name in standard)
    rotation = [run for run in runs.values() if run.method == "rotation" and run.config]
    assert rotation and all(run.config.method_options == {} for run in rotation)  # no other form: one row
