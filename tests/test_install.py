"""The CUDA 12 install (README, Install) stays in step with pyproject.toml and with what `ssrr env` prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ssrr.devices import INSTALL_CUDA12

REPO = Path(__file__).resolve().parent.parent


def _requirements(lines: list[str]) -> dict[str, str]:
    """name -> version specifier of requirement lines (comments and options dropped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line).groups()  # type: ignore[union-attr]
            out[name.lower()] = spec.replace(" ", "")
    return out


def test_cuda12_requirements_are_pyprojects_with_dali_cuda120() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    default = _requirements(project["dependencies"])
    cuda12 = _requirements((REPO / "requirements-cuda12.txt").read_text().splitlines())
    expected = {name: spec for name, spec in default.items() if name not in ("torch", "torchvision")}
    expected["nvidia-dali-cuda120"] = expected.pop("nvidia-dali-cuda130")
    assert cuda12 == expected
    torch_line = f'"torch{default["torch"]}" "torchvision{default["torchvision"]}"'
    assert torch_line in INSTALL_CUDA12  # the ranges ssrr env prints are pyproject's


def test_readme_install_has_the_cuda12_lines() -> None:
    readme = (REPO / "README.md").read_text()
    install = readme.split("## Install", 1)[1].split("\n## ", 1)[0]
    for command in INSTALL_CUDA12.split("  (")[0].split(" && "):
        assert command in install, command
    assert "--index-url https://download.pytorch.org/whl/cu126" in install
