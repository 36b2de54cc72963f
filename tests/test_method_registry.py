"""Adding a method is one file: every module of ssrr/methods registers itself, and a method's options reach the
command line, the checks and the config from its own declaration (docs/architecture.md, "A method")."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import ssrr.methods
from ssrr.config import RunConfig
from ssrr.declare import option
from ssrr.errors import SsrrError
from ssrr.methods.base import METHODS, register, with_method_defaults
from ssrr.methods.relational import Relational
from ssrr.run_options import config_args, config_from_options, run_options

METHODS_DIR = Path(ssrr.methods.__file__).parent


def test_every_method_module_registers_itself_without_a_list_to_edit() -> None:
    init = ast.parse((METHODS_DIR / "__init__.py").read_text())
    listed = {alias.name for node in ast.walk(init) if isinstance(node, ast.ImportFrom) for alias in node.names}
    for path in METHODS_DIR.glob("*.py"):
        if path.stem in ("__init__", "base", "heads"):
            continue
        assert path.stem not in listed, f"{path.name} is listed in ssrr/methods/__init__.py"
        registered = {cls.__module__ for cls in METHODS.values()}
        assert f"ssrr.methods.{path.stem}" in registered, f"{path.name} registers no method"


@dataclass
class ToyOptions:
    margin: float = option(0.5, "toy: the margin of its loss.", "method", flag="--toy-margin")


@pytest.fixture
def toy() -> Iterator[str]:
    @register
    class ToyMethod(Relational):
        name = "toy"
        options_type = ToyOptions

    yield "toy"
    del METHODS["toy"]


def test_a_toy_methods_option_is_an_option_checked_saved_and_passed_on(toy: str) -> None:
    declared = {item.flag: item for item in run_options()}
    assert "--toy-margin" in declared and declared["--toy-margin"].default == 0.5
    typed = {"method": toy, "toy_margin": 0.2}  # by parameter name, as the command hands them
    config = config_from_options(typed, set(typed), lambda: (32, 32))
    config = with_method_defaults(replace(config, dataset="cifar10")).validate()
    assert config.method_options == {"margin": 0.2}
    assert "--toy-margin" in config_args(config)  # what `ssrr reproduce` hands a launched `ssrr pretrain`
    assert RunConfig.from_json(config.to_json()).method_options == {"margin": 0.2}  # saved and read back
    with pytest.raises(SsrrError, match="--toy-margin"):  # refused with another method
        other = {"method": "simclr", "toy_margin": 0.2}
        config_from_options(other, set(other), lambda: (32, 32))
