"""ssrr: Self-Supervised Relational Reasoning, trained from WebDataset shards through DALI pipelines."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# `pipelines/` and `cli/` live at the top of the repository and are installed as `ssrr.pipelines` and
# `ssrr.cli` (see pyproject.toml). When ssrr is imported straight from a checkout without installing it
# (`python -m ssrr` in the repository root), let the package path reach those two folders too.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "pipelines" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # type: ignore[name-defined]
