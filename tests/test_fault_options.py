"""Fault injection, options: NaN, inf, negative and huge values for every numeric option of every command,
hostile names, and options whose package is missing. Each: non-zero exit, one `Error:` line naming the
option, nothing written anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from fixtures_data import error_lines, run_ssrr

from ssrr import options

# Positional arguments that let each command parse (the checks run before any of them is used).
ARGUMENTS = {
    ("shard", "make"): ["synthetic"],
    ("demo",): [],
    ("pretrain",): ["--dataset", "synthetic"],
    ("reproduce",): ["table1"],
    ("report",): ["runs/x"],
    ("embed",): ["random:conv4", "photos", "--out", "x.npy"],
}
FLOAT_VALUES = ["nan", "inf", "-inf", "-1", "1e300"]
INT_VALUES = ["-1", str(10**12), "nan", "1e3"]


def _numeric_options() -> list[tuple[tuple[str, ...], str, type]]:
    """(command path, flag, int or float) of every numeric option of every command."""
    from ssrr.cli.app import _mount, app

    _mount()
    found: list[tuple[tuple[str, ...], str, type]] = []

    def walk(command, path: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
            return
        for param in command.params:
            # typer's recorded annotation where it keeps one (newer typer), else click's type (typer 0.16)
            kind = getattr(getattr(param, "type_descriptor", None), "annotation", None) or {
                "integer": int,
                "float": float,
            }.get(getattr(param.type, "name", ""))
            if kind in (int, float) and param.opts and param.opts[0].startswith("--"):
                found.append((path, param.opts[0], kind))

    walk(typer.main.get_command(app), ())
    return found


NUMERIC = _numeric_options()


def _arguments(path: tuple[str, ...]) -> list[str]:
    if path[0] == "eval":
        return ["random:conv4"]
    return ARGUMENTS.get(path, [])


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder (runs/, shards/ land here by default) and an empty cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSRR_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_every_command_has_numeric_options_found() -> None:
    commands = {path for path, _, _ in NUMERIC}
    assert ("pretrain",) in commands and ("shard", "make") in commands and ("eval", "linear") in commands
    assert any(flag == "--lr" for _, flag, _ in NUMERIC) and len(NUMERIC) > 40


@pytest.mark.parametrize(("path", "flag", "kind"), NUMERIC, ids=[f"{' '.join(p)} {f}" for p, f, _ in NUMERIC])
def test_hostile_numbers_are_one_line_and_write_nothing(path, flag, kind, empty_cwd: Path) -> None:
    for value in FLOAT_VALUES if kind is float else INT_VALUES:
        result = run_ssrr(*path, *_arguments(path), flag, value)
        assert result.exit_code != 0, f"{flag} {value}: {result.output}"
        lines = error_lines(result)
        assert len(lines) == 1 and flag in lines[0], f"{flag} {value}: {result.output}"
        assert "Traceback" not in result.output
        assert list(empty_cwd.iterdir()) == [], f"{flag} {value} wrote {list(empty_cwd.iterdir())}"


def test_every_limit_refuses_what_it_should() -> None:
    for name, limit in options.LIMITS.items():
        for bad in (float("nan"), float("inf"), limit.high * 2 + 1, limit.low - 1):
            with pytest.raises(options.SsrrError, match=f"--{name.replace('_', '-')}"):
                options.check_number(name, bad)
        options.check_number(name, limit.high)  # the ends of the range are allowed (unless open)
    options.check_number("lr", 1e-3)
    with pytest.raises(options.SsrrError, match="--lr must be > 0"):
        options.check_number("lr", 0.0)


HOSTILE_NAMES = ["../x", "../../etc/x", "/tmp/abs", "a/b", ".hidden", "..", "-rf", "a b", "x\ny", "a\\b", "é"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_by_every_command_with_a_name(name: str, empty_cwd: Path) -> None:
    for args in (["pretrain", "--dataset", "synthetic"], ["shard", "synthetic"]):
        result = run_ssrr(*args, "--name", name)
        assert result.exit_code == 1, result.output
        assert len(error_lines(result)) == 1 and "--name" in error_lines(result)[0]
        assert list(empty_cwd.iterdir()) == []


def test_a_tracker_that_is_not_installed_names_its_extra(empty_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(options.TRACKERS, "tensorboard", options.Extra(("ssrr_no_such_module",), "tensorboard"))
    result = run_ssrr("pretrain", "--dataset", "synthetic", "--log-with", "tensorboard")
    assert result.exit_code == 1
    assert error_lines(result) == [
        "Error: --log-with tensorboard needs the optional ssrr_no_such_module package, not installed: "
        'pip install "ssrr[tensorboard]"'
    ]
    unknown = run_ssrr("pretrain", "--dataset", "synthetic", "--log-with", "nosuch")
    assert unknown.exit_code == 1 and "--log-with 'nosuch'" in error_lines(unknown)[0]
    assert list(empty_cwd.iterdir()) == []


def test_remote_shards_without_their_package_name_the_extra(empty_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(options.SCHEMES, "s3", options.Extra(("ssrr_no_such_module",), "s3"))
    result = run_ssrr("pretrain", "--dataset", "s3://bucket/shards/x", "--backbone", "conv4")
    assert result.exit_code == 1
    line = error_lines(result)[0]
    assert "s3://bucket/shards/x" in line and 'pip install "ssrr[s3]"' in line
    assert list(empty_cwd.iterdir()) == []  # not even the cache folder


def test_the_extras_named_by_errors_exist_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for extra in [*options.TRACKERS.values(), *options.SCHEMES.values(), *options.FEATURES.values()]:
        assert extra.extra in extras, extra
        for module in extra.modules:
            assert any(module in requirement for requirement in extras[extra.extra]), (extra, module)


def test_library_config_checks_the_same_numbers(tmp_path: Path) -> None:
    from ssrr.config import RunConfig

    for bad in ({"lr": float("nan")}, {"lr": float("inf")}, {"weight_decay": -0.1}, {"seed": -1}, {"k": 10**9}):
        with pytest.raises(options.SsrrError, match="--" + next(iter(bad)).replace("_", "-")):
            RunConfig(out=str(tmp_path), **bad).resolved().validate()
    with pytest.raises(options.SsrrError, match="--name"):
        RunConfig(out=str(tmp_path), name="../up").validate()
    assert os.listdir(tmp_path) == []
