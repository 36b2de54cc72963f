"""DALI pipelines (installed as `ssrr.pipelines`): shards in, K augmented views per image out, on the device.

- :mod:`ssrr.pipelines.recipes`: :class:`Recipe` and ``relational(k)``, ``simclr()``, ``evaluation()``,
  ``crop_flip()``, ``flip()``, ``rotation()``;
- :mod:`ssrr.pipelines.loader`: :class:`ViewLoader` (the DALI loader) and :class:`Batch`;
- :mod:`ssrr.pipelines.reference`: the plain torchvision implementation (tests, benchmark baseline);
- :mod:`ssrr.pipelines.graph`, :mod:`ssrr.pipelines.sampling`, :mod:`ssrr.pipelines.shards`: the DALI graph,
  the per-view random draws, the shard checks; :mod:`ssrr.pipelines.synthetic`: small shard sets for tests.

The names are re-exported lazily, so importing the recipes does not import DALI or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Recipe": "recipes",
    "relational": "recipes",
    "simclr": "recipes",
    "evaluation": "recipes",
    "crop_flip": "recipes",
    "flip": "recipes",
    "rotation": "recipes",
    "ViewLoader": "loader",
    "Batch": "loader",
    "ReferenceViews": "reference",
    "reference_loader": "reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
