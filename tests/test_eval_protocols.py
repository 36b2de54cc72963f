"""The evaluation protocol registry: every protocol registered once and looked up by the CLI, the probes and
`ssrr reproduce`; a toy protocol added with one registration runs through both; result files name what was
evaluated, so two backbones evaluated into one folder keep both results."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_data import error_lines, run_ssrr
from test_eval_linear import make_run

from ssrr.errors import SsrrError
from ssrr.eval.protocols import EvalContext, Option, Protocol, protocol, protocols, register, source_tag, unregister
from ssrr.train.checkpoint import LoadedBackbone, load_backbone

PAPER = {"linear", "finetune", "semi", "retrieval", "tsne", "knn"}


def toy_eval(loaded: LoadedBackbone, shard_dir: Path | str, *, scale: float = 1.0, **shared: Any) -> dict[str, Any]:
    """A protocol as small as one can be: the scored split's sample count times `scale`, written as a result."""
    ctx = EvalContext.open(loaded, shard_dir, **shared)
    result = ctx.result("toy")
    result["top1"] = ctx.manifest.splits[ctx.split].samples * scale
    return ctx.finish(ctx.stem("toy"), result)


@pytest.fixture
def toy() -> Iterator[Protocol]:
    from ssrr.cli import evaluate

    added = register(Protocol("toy", toy_eval, "A toy protocol.", (Option("scale", float, 1.0, "Multiplier."),)))
    yield added
    unregister("toy")
    evaluate.eval_app.registered_commands[:] = [
        c for c in evaluate.eval_app.registered_commands if c.name != "toy"
    ]  # fmt: skip
    evaluate._COMMANDS.discard("toy")


def test_the_papers_protocols_are_registered_with_a_command_each() -> None:
    assert {p.name for p in protocols()} >= PAPER
    assert protocol("knn").probe is not None and protocol("linear").probe is not None
    with pytest.raises(SsrrError, match="unknown evaluation protocol 'nope'"):
        protocol("nope")
    listed = run_ssrr("eval", "--help")
    assert listed.exit_code == 0 and all(name in listed.output for name in PAPER)


def test_a_toy_protocol_runs_through_the_registry_and_the_cli(toy: Protocol, tiny_shards: Path, tmp_path: Path) -> None:
    from ssrr.cli.evaluate import sync_protocols

    assert protocol("toy") is toy
    direct = protocol("toy").run(load_backbone("random:conv4"), tiny_shards, scale=0.5, device="cpu", out=tmp_path)
    assert direct["top1"] == 32.0 and direct["split"] == "test" and direct["source"] == "random:conv4"
    assert sync_protocols() == ["toy"]
    args = ("eval", "toy", "random:conv4", "--dataset", tiny_shards, "--out", tmp_path, "--device", "cpu")
    result = run_ssrr(*args, "--scale", "2", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["top1"] == 128.0 and printed["protocol"] == "toy"
    saved = json.loads((tmp_path / "toy-tiny-random-conv4-s1.json").read_text())
    assert saved["top1"] == 128.0  # the same file, rewritten: rerunning an evaluation replaces its own result
    refused = run_ssrr(*args, "--labels", "coarse")  # the shared set-up checks labels for every protocol
    assert refused.exit_code == 1 and "no coarse classes" in error_lines(refused)[0]


def test_two_backbones_evaluated_into_one_folder_keep_both_results(tiny_shards: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path / "relational-conv4-tiny-s1", dataset=str(tiny_shards))
    out = tmp_path / "together"
    common = ("--dataset", tiny_shards, "--epochs", "1", "--device", "cpu", "--out", out, "--json")
    for spec in (run, "random:conv4"):
        result = run_ssrr("eval", "linear", spec, *common)
        assert result.exit_code == 0, result.output
    by_run = json.loads((out / "linear-tiny-relational-conv4-tiny-s1-s1.json").read_text())
    by_random = json.loads((out / "linear-tiny-random-conv4-s1.json").read_text())
    assert by_run["source"] == str(run) and by_random["source"] == "random:conv4"
    assert (out / "linear-tiny-relational-conv4-tiny-s1-s1-confusion.png").is_file()
    assert (out / "linear-tiny-random-conv4-s1-confusion.png").is_file()
    assert len(list(out.glob("*.json"))) == 2
    report = run_ssrr("report", str(out), "--json")  # the report reads both, one row each
    assert report.exit_code == 0, report.output
    table = json.loads(report.stdout.strip().splitlines()[-1])
    assert table["results"] == 2 and len(table["rows"]) == 2


def test_the_file_stem_names_the_run_the_checkpoint_or_the_random_backbone(tmp_path: Path) -> None:
    run = make_run(tmp_path / "my run")
    assert source_tag(load_backbone(run)) == "my_run"
    assert source_tag(load_backbone(run / "backbone.safetensors")) == "my_run"
    assert source_tag(load_backbone("random:conv4")) == "random-conv4"


def test_older_option_names_stay_accepted(tiny_shards: Path, tmp_path: Path) -> None:
    common = ("random:conv4", "--dataset", tiny_shards, "--device", "cpu", "--out", tmp_path, "--json")
    for flag in ("--neighbours", "--k"):  # --k: the name earlier issues gave k-NN's neighbours
        result = run_ssrr("eval", "knn", *common, flag, "5")
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout.strip().splitlines()[-1])
        assert printed["neighbours"] == printed["k"] == 5
    assert "--k " not in run_ssrr("eval", "knn", "--help").output  # hidden
    for flag in ("--split", "--queries"):
        result = run_ssrr("eval", "retrieval", *common, flag, "train", "--gallery", "train", "--show", "0")
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout.strip().splitlines()[-1])
        assert printed["query_split"] == printed["split"] == "train" and printed["gallery_split"] == "train"
