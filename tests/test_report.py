"""`ssrr report`: results grouped by (method, backbone) and protocol column, mean±std over seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssrr.config import RunConfig
from ssrr.eval.report import STANDARD_COLUMNS, build_table, canonical, find_results, to_markdown


def result(protocol: str, dataset: str, top1: float, source: str, labels: str = "fine", **extra) -> dict:
    return {
        "protocol": protocol,
        "dataset": dataset,
        "labels": labels,
        "top1": top1,
        "top5": 99.0,
        "source": source,
        "backbone": "conv4",
        **extra,
    }


def write(folder: Path, name: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data))


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, (c100, c10, grain) in zip(
        (1, 2, 3), [(46.0, 67.0, 52.0), (46.2, 68.0, 52.5), (46.4, 68.5, 53.0)], strict=True
    ):
        run = root / f"relational-conv4-cifar100-s{seed}"
        RunConfig(method="relational", dataset="cifar100", backbone="conv4", seed=seed, name=run.name).save(run)
        write(run / "eval", "linear-cifar100-s1.json", result("linear", "cifar100", c100, str(run)))
        write(run / "eval", "linear-cifar10-s1.json", result("linear", "cifar10", c10, str(run)))
        write(run / "eval", "linear-cifar100-coarse-s1.json", result("linear", "cifar100", grain, str(run), "coarse"))
        write(run / "eval", "knn-cifar100-s1.json", result("knn", "cifar100", 40.0 + seed, str(run)))
        write(run / "eval", "tsne-cifar100-s1.json", {"protocol": "tsne", "dataset": "cifar100", "source": str(run)})
    ten = root / "simclr-conv4-cifar10-s1"
    RunConfig(method="simclr", dataset="shards/cifar10-jpeg", backbone="conv4", name=ten.name).save(ten)
    write(ten / "eval", "linear-cifar100-s1.json", result("linear", "cifar100", 36.2, str(ten)))
    for seed, value in ((1, 7.0), (2, 8.0)):
        write(
            root / "random-conv4" / "eval",
            f"linear-cifar100-s{seed}.json",
            result("linear", "cifar100", value, "random:conv4", method="random"),
        )
    write(
        root / "random-conv4" / "eval",
        "semi-cifar100-s1.json",
        result("semi", "cifar100", 30.0, "random:conv4", fractions={"0.01": 10.0, "1": 30.0}),
    )
    (root / "relational-conv4-cifar100-s1" / "metrics.jsonl").write_text("{}\n")  # not a result: ignored
    return root


def test_rows_columns_and_mean_std_over_seeds(runs: Path) -> None:
    table = build_table(find_results([runs]))
    assert table.columns[: len(STANDARD_COLUMNS)] == list(STANDARD_COLUMNS)
    assert "k-NN CIFAR-100" in table.columns and "Semi 1% CIFAR-100" in table.columns
    assert table.rows == [("Random Weights", "conv4"), ("SimCLR", "conv4"), ("Relational Reasoning", "conv4")]
    ours = table.cells[("Relational Reasoning", "conv4")]
    assert ours["Linear CIFAR-100"].mean == pytest.approx(46.2)
    assert ours["Linear CIFAR-100"].std == pytest.approx(statistics.pstdev([46.0, 46.2, 46.4]))
    assert ours["Linear CIFAR-100"].text() == "46.20±0.16"
    assert ours["Domain 100->10"].values == [67.0, 68.0, 68.5]
    assert ours["Grain CIFAR-100-20"].mean == pytest.approx(52.5)
    assert len(ours["k-NN CIFAR-100"].values) == 3
    assert table.cells[("SimCLR", "conv4")]["Domain 10->100"].text() == "36.20"  # one result: no ±
    random = table.cells[("Random Weights", "conv4")]
    assert random["Linear CIFAR-100"].text() == "7.50±0.50"
    assert random["Domain 10->100"].values == [7.0, 8.0]  # pretrained on nothing: transfer = direct
    assert table.text(("SimCLR", "conv4"), "Finetune STL-10") == "-"


def test_markdown_and_cli_json(runs: Path, tmp_path: Path) -> None:
    table = build_table(find_results([runs]))
    md = to_markdown(table)
    assert md.splitlines()[0].startswith("| Method | Backbone | Linear CIFAR-100 | Linear tiny-ImageNet |")
    assert "| Relational Reasoning | conv4 | 46.20±0.16 | - | - | 67.83±0.62 | 52.50±0.41 | - |" in md
    from ssrr.cli.app import _mount, app

    _mount()
    out = tmp_path / "table.md"
    res = CliRunner().invoke(app, ["report", str(runs), str(runs / "random-conv4"), "--markdown", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["results"] == 19  # each file once, though given twice
    assert out.read_text() == md
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "no such run" in missing.output


def test_dataset_names_are_canonical() -> None:
    assert canonical("shards/cifar10-jpeg") == "cifar10"
    assert canonical("CIFAR100") == "cifar100"
    assert canonical("tiny_imagenet") == "tiny-imagenet"
    assert canonical("mnist") == "mnist"
