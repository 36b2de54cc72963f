"""The run config written once: RunConfig's declarations make `ssrr pretrain`'s options, the reverse mapping
(`ssrr reproduce`), the checks and resume merging; each method owns its options; older config.json files load."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest
import typer
from fixtures_data import error_lines, run_ssrr

from ssrr.config import CONFIG_FILE, RunConfig, merge_with_saved
from ssrr.declare import GROUPS, declared
from ssrr.errors import SsrrError
from ssrr.methods.base import METHODS, option_fields, with_method_defaults
from ssrr.run_options import config_args, config_from_options, given_fields, run_options


def _pretrain_command() -> Any:
    """The click command of `ssrr pretrain` (typer bundles its own click: used by its attributes)."""
    from ssrr.cli.app import _mount, app

    _mount()
    return typer.main.get_command(app).commands["pretrain"]  # type: ignore[attr-defined]


def _parse(args: list[str], resume: bool = False) -> RunConfig:
    """`ssrr pretrain ARGS` parsed by the real command's parser into the config it would run."""
    ctx = _pretrain_command().make_context("pretrain", list(args))
    typed = {name for name in ctx.params if (source := ctx.get_parameter_source(name)) and source.name == "COMMANDLINE"}
    return config_from_options(ctx.params, typed, lambda config: (32, 32), resume=resume)


def test_every_config_field_is_a_pretrain_option_with_its_default_and_help() -> None:
    params = {param.name: param for param in _pretrain_command().params}
    specs = run_options()
    declared_fields = {item.name for item in fields(RunConfig) if declared(item) is not None}
    assert declared_fields == {item.name for item in fields(RunConfig)} - {"method_options"}
    assert {spec.name for spec in specs if spec.method is None} == declared_fields
    for spec in specs:
        param = params[spec.param]
        assert param.param_type_name == "option", spec.flag
        assert spec.flag in param.opts, (spec.flag, param.opts)
        default = list(param.default) if isinstance(param.default, (list, tuple)) else param.default
        assert default == spec.default, spec.flag
        assert spec.how.help and param.help and param.help.startswith(spec.how.help[:30]), spec.flag
        assert spec.how.group in GROUPS


def test_earlier_flags_still_exist() -> None:
    names = {opt for param in _pretrain_command().params for opt in [*param.opts, *param.secondary_opts]}
    earlier = "--amp --no-amp --k --batch --bn-recalibrate --no-bn-recalibrate --time-budget --log-with --processes"
    earlier += " --machines --machine-rank --main-address --main-port --resume --quiet --simclr-loss --infomax-prior"
    earlier += " --infomax-critic --supervised-augment --labels --skip-corrupt --log-samples --preset --precision"
    earlier += " --channels-last --no-channels-last --sync-bn --compile --view-size --view-size-end --crop-min"
    assert set(earlier.split()) <= names


def test_method_options_declare_their_own_flags_that_collide_with_nothing() -> None:
    flags = [spec.flag for spec in run_options()]
    assert len(flags) == len(set(flags))
    assert {spec.method for spec in run_options() if spec.method} == {"simclr", "infomax", "supervised"}
    assert [item.name for item in option_fields(METHODS["supervised"])] == ["labels", "augment"]


ROUND_TRIPS = [
    RunConfig(
        method="simclr", backbone="conv4", batch=32, lr=0.01, time_budget_s=90.0, method_options={"loss": "official"}
    ),
    RunConfig(
        dataset="shards/photos", backbone="tv:resnet18", stem="cifar", k=4, view_size=20, view_size_end=32,
        bn_recalibrate=True, channels_last=False, skip_corrupt=True, knn_every=2, max_steps=5, name="r18",
    ),
    RunConfig(
        method="supervised", epochs=3, weight_decay=5e-4, method_options={"labels": "coarse", "augment": "affine-erase"}
    ),
    RunConfig(method="infomax", precision="bf16", device="cpu", seed=7, method_options={"critic": "dot"}),
]  # fmt: skip


@pytest.mark.parametrize("config", ROUND_TRIPS, ids=lambda c: c.method)
def test_config_survives_flags_and_back(config: RunConfig) -> None:
    assert _parse(config_args(config)) == config


def test_a_preset_config_survives_flags_and_back() -> None:
    # --k typed wins; M stays the preset's
    fast = _parse(["--preset", "fast", "--backbone", "tv:resnet18", "--k", "4", "--name", "f"])
    assert (fast.k, fast.batch, fast.view_size, fast.time_budget_s, fast.lr_schedule) == (4, 32, 24, 900.0, "cosine")
    assert _parse(config_args(fast)) == fast
    typed_epochs = _parse(["--preset", "fast", "--epochs", "3"])
    assert typed_epochs.time_budget_s is None and _parse(config_args(typed_epochs)) == typed_epochs


def test_reproduce_gives_what_the_launched_command_takes_as_typed() -> None:
    config = with_method_defaults(ROUND_TRIPS[0])
    ctx = _pretrain_command().make_context("pretrain", config_args(config))
    typed = {name for name in ctx.params if (source := ctx.get_parameter_source(name)) and source.name == "COMMANDLINE"}
    by_param = {spec.param: spec for spec in run_options()}
    typed_fields = {by_param[name].name if by_param[name].method is None else "method_options" for name in typed}
    assert typed_fields == given_fields(config)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--batch", "0"], "--batch must be >= 2 and <= 65536, got 0"),
        (["--view-size", "0"], "--view-size must be >= 1 and <= 8192, got 0"),
        (["--knn-every", "0"], "--knn-every must be >= 1 and <= 2147483647, got 0"),
        (["--max-steps", "0"], "--max-steps must be >= 1 and <= 2147483647, got 0"),
        (["--head", "bilinear"], "--head must be one of relation, dot, encoder-dot, got 'bilinear'"),
        (["--simclr-loss", "official"], "--simclr-loss is an option of --method simclr, not of relational"),
        (["--method", "simclr", "--simclr-loss", "x"], "--simclr-loss must be one of nt-xent, official, got 'x'"),
    ],
)  # fmt: skip
def test_typed_values_are_checked_as_typed(args: list[str], line: str, tmp_path: Path) -> None:
    result = run_ssrr("pretrain", "--dataset", tmp_path / "none", "--out", tmp_path, *args)
    assert result.exit_code != 0
    assert error_lines(result) == [f"Error: {line}"]
    assert not any(tmp_path.iterdir())  # nothing written


def test_method_options_are_saved_under_the_methods_name(tmp_path: Path) -> None:
    config = with_method_defaults(RunConfig(method="simclr", name="s"))
    config.save(tmp_path)
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert saved["simclr"] == {"loss": "nt-xent"} and "simclr_loss" not in saved and "method_options" not in saved
    assert RunConfig.load(tmp_path) == config


# config.json as the version before issue 27 wrote it: flat method options, 0 for "not given".
OLD_CONFIG: dict[str, Any] = {
    "method": "supervised", "preset": "paper", "dataset": "cifar10", "split": "train", "backbone": "conv4",
    "stem": "default", "k": 32, "batch": 0, "epochs": 2, "lr": None, "weight_decay": 0.0, "lr_schedule": "constant",
    "warmup_epochs": 0.0, "crop_min": 0.08, "view_size": 0, "view_size_end": 0, "bn_recalibrate": False,
    "loss": "focal", "aggregation": "cat", "head": "relation", "labels": "coarse", "precision": "fp32",
    "channels_last": True, "compile": False, "grad_accum": 1, "sync_bn": False, "seed": 1, "out": "runs",
    "name": "old", "shards_root": "shards", "keep_checkpoints": 2, "checkpoint_every": 1, "max_steps": 0,
    "time_budget_s": 0.0, "knn_every": 0, "eval_every": 0, "log_with": [], "device": "auto", "num_threads": 0,
    "skip_corrupt": False, "log_samples": False, "simclr_loss": "nt-xent", "infomax_prior": "adversarial",
    "infomax_critic": "concat", "supervised_augment": "affine-erase",
}  # fmt: skip


def test_an_older_config_json_loads(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(json.dumps(OLD_CONFIG))
    config = RunConfig.load(tmp_path)
    unset = ("batch", "view_size", "view_size_end", "max_steps", "time_budget_s", "knn_every", "eval_every")
    assert all(getattr(config, key) is None for key in (*unset, "num_threads"))
    assert config.method_options == {"labels": "coarse", "augment": "affine-erase"}
    assert config.validate() is config
    assert with_method_defaults(config).batch == 128
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**OLD_CONFIG, "epochs": "two"}))
    with pytest.raises(SsrrError, match="malformed config"):
        RunConfig.load(tmp_path)


def test_resume_keeps_the_saved_config_except_what_is_given(tmp_path: Path) -> None:
    saved = RunConfig(
        method="simclr", epochs=4, batch=16, out=str(tmp_path), name="r", method_options={"loss": "official"}
    )
    saved.save(tmp_path / "r")
    typed = RunConfig(method="simclr", epochs=9, batch=99, out=str(tmp_path), name="r")
    merged = merge_with_saved(typed, {"epochs", "out", "name"})
    assert (merged.epochs, merged.batch, merged.method_options) == (9, 16, {"loss": "official"})
    fresh = RunConfig(out=str(tmp_path), name="new")
    assert merge_with_saved(fresh, set()) == fresh  # nothing saved: --resume starts it


def test_resuming_with_one_method_option_keeps_the_saved_method_and_its_other_options(tmp_path: Path) -> None:
    saved = RunConfig(method="infomax", out=str(tmp_path), name="r", method_options={"prior": "official"})
    saved.save(tmp_path / "r")
    resumed = _parse(["--out", str(tmp_path), "--name", "r", "--infomax-critic", "dot"], resume=True)
    assert (resumed.method, resumed.method_options) == ("infomax", {"prior": "official", "critic": "dot"})
    with pytest.raises(SsrrError, match="--simclr-loss is an option of --method simclr, not of infomax"):
        _parse(["--out", str(tmp_path), "--name", "r", "--simclr-loss", "official"], resume=True)


def test_an_older_run_folder_resumes_through_the_cli(tiny_shards: Path, tmp_path: Path) -> None:
    common = ["pretrain", "--dataset", tiny_shards, "--backbone", "conv4", "--k", "2", "--batch", "32", "--quiet"]
    first = run_ssrr(*common, "--epochs", "1", "--out", tmp_path, "--name", "old", "--num-threads", "1")
    assert first.exit_code == 0, first.output
    path = tmp_path / "old" / CONFIG_FILE
    new = json.loads(path.read_text())
    old = {**{key: new[key] for key in new if key in OLD_CONFIG}, "max_steps": 0, "view_size": 0, "time_budget_s": 0.0}
    old |= {"knn_every": 0, "eval_every": 0, "view_size_end": 0, "simclr_loss": "nt-xent", "labels": "fine"}
    path.write_text(json.dumps(old))  # as the version before wrote it
    resumed = run_ssrr(*common[:1], "--out", tmp_path, "--name", "old", "--epochs", "2", "--resume", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    config = json.loads(path.read_text())
    assert (config["epochs"], config["k"], config["batch"], config["max_steps"]) == (2, 2, 32, None)
    records = [json.loads(line) for line in (tmp_path / "old" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["epoch"] == 2 and records[-1]["complete"]


def test_config_from_options_leaves_what_is_not_typed_to_the_method() -> None:
    config = _parse(["--method", "supervised", "--labels", "coarse"])
    assert config.batch is None and config.lr is None and config.method_options == {"labels": "coarse"}
    assert asdict(with_method_defaults(config))["method_options"] == {"labels": "coarse", "augment": "crop-flip"}


def test_command_line_shapes_of_earlier_issues_make_their_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssrr.train.loop

    captured: list[RunConfig] = []
    monkeypatch.setattr(ssrr.train.loop, "pretrain", lambda config, **_: captured.append(config))
    shapes = [
        (["--amp", "--time-budget", "15m", "--k", "4", "--bn-recalibrate"], {"precision": "auto", "k": 4}),
        (["--amp", "--precision", "bf16", "--no-channels-last"], {"precision": "bf16", "channels_last": False}),
        (["--method", "supervised", "--labels", "coarse"], {"method_options": {"labels": "coarse"}}),
        (["--processes", "1", "--machines", "1", "--main-port", "29501"], {"precision": "fp32"}),
    ]
    for args, expected in shapes:
        result = run_ssrr("pretrain", "--dataset", "shards/x", *args)
        assert result.exit_code == 0, result.output
        assert {key: getattr(captured[-1], key) for key in expected} == expected, args
    assert captured[0].time_budget_s == 900.0 and captured[0].bn_recalibrate


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--view-size", "24"], True),  # views smaller than the 32-px images: recalibrated by default
        (["--view-size", "24", "--no-bn-recalibrate"], False),  # typed: as typed
        (["--view-size", "32"], False),  # views of the images' own size
        (["--view-size", "20", "--view-size-end", "32"], False),  # the last epoch's views are full size
        ([], False),  # no --view-size: the paper's runs, unchanged
        (["--bn-recalibrate"], True),
    ],
)
def test_batchnorm_is_recalibrated_by_default_where_the_views_are_smaller_than_the_images(
    args: list[str], expected: bool
) -> None:
    assert _parse(args).bn_recalibrate is expected
