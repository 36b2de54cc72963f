"""A training state (optimizer, scheduler, loss scaler, RNG, progress) on disk without pickle.

Two files: `state.safetensors` holds every tensor (optimizer moments, torch and CUDA RNG states) and
`state.json` the structure around them, with each tensor replaced by a reference. Reading them parses JSON
and safetensors only, so no file in a run folder, planted or damaged, can make a resume run code.

Admitted values: None, bool, int, float, str, list, tuple, dict (keys of those scalar types),
`collections.Counter` (MultiStepLR's milestones), torch tensors, and numpy arrays of numbers (numpy's RNG
state). Python floats and ints survive JSON exactly, tensors keep their bytes: a resume is bit-identical.
JSON encodes tuples, Counters, dicts with non-string keys, arrays and tensor references as one-key objects
whose key starts with `$`; a dict whose keys all are strings not starting with `$` stays a plain object.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ssrr.errors import SsrrError
from ssrr.files import save_safetensors, write_text_atomic

JSON_FILE = "state.json"
TENSORS_FILE = "state.safetensors"
FORMAT = "ssrr-training-state"
VERSION = 1
_SCALARS = (type(None), bool, int, float, str)
_NUMERIC_KINDS = "biuf"  # numpy dtype kinds admitted: bool, signed, unsigned, float


class _Encoder:
    """Walks a state, collecting tensors under `t0`, `t1`, ... and returning the JSON-able rest."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def encode(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"t{len(self.tensors)}"
            self.tensors[key] = value.detach().cpu().contiguous().clone()
            return {"$tensor": key}
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _NUMERIC_KINDS:
                raise TypeError(f"training state: numpy array of dtype {value.dtype} is not storable")
            return {"$ndarray": {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.ravel().tolist()}}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, list):
            return [self.encode(item) for item in value]
        if isinstance(value, tuple):
            return {"$tuple": [self.encode(item) for item in value]}
        if isinstance(value, Counter):
            return {"$counter": self._pairs(value)}
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: self.encode(v) for k, v in value.items()}
            return {"$dict": self._pairs(value)}
        raise TypeError(f"training state: a {type(value).__name__} is not storable without pickle")

    def _pairs(self, mapping: dict[Any, Any]) -> list[list[Any]]:
        for key in mapping:
            if not isinstance(key, _SCALARS):
                raise TypeError(f"training state: dict key {key!r} is not a plain scalar")
        return [[key, self.encode(item)] for key, item in mapping.items()]


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Write `state` as `folder/state.json` and `folder/state.safetensors`."""
    encoder = _Encoder()
    body = encoder.encode(state)
    save_safetensors(encoder.tensors, folder / TENSORS_FILE, {"format": FORMAT})
    document = {"format": FORMAT, "version": VERSION, "state": body}
    write_text_atomic(folder / JSON_FILE, json.dumps(document, indent=1) + "\n")


def load_state(folder: Path) -> dict[str, Any]:
    """Read a state written by `save_state`; anything else is an SsrrError naming the file."""
    path = folder / JSON_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SsrrError(f"{path}: unreadable training state ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SsrrError(f"{path}: not an ssrr training state")
    if document.get("version") != VERSION:
        raise SsrrError(f"{path}: training state version {document.get('version')!r}, this ssrr reads {VERSION}")
    tensors_path = folder / TENSORS_FILE
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SsrrError(f"{tensors_path}: not a readable safetensors file ({exc})") from None
    state = _Decoder(tensors, path).decode(document.get("state"))
    if not isinstance(state, dict):
        raise SsrrError(f"{path}: the training state is not a mapping")
    return state


class _Decoder:
    """The inverse of `_Encoder`; any structure it did not write is refused with the file's name."""

    def __init__(self, tensors: dict[str, torch.Tensor], origin: Path) -> None:
        self.tensors = tensors
        self.origin = origin

    def fail(self, what: str) -> SsrrError:
        return SsrrError(f"{self.origin}: malformed training state ({what})")

    def decode(self, value: Any) -> Any:
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, list):
            return [self.decode(item) for item in value]
        if not isinstance(value, dict):
            raise self.fail(f"unexpected {type(value).__name__}")
        marked = [key for key in value if key.startswith("$")]
        if not marked:
            return {key: self.decode(item) for key, item in value.items()}
        if len(value) != 1:
            raise self.fail(f"marker {marked[0]} among other keys")
        ((kind, body),) = value.items()
        if kind == "$tensor":
            if not isinstance(body, str) or body not in self.tensors:
                raise self.fail(f"reference to a missing tensor {body!r}")
            return self.tensors[body]
        if kind == "$tuple" and isinstance(body, list):
            return tuple(self.decode(item) for item in body)
        if kind in ("$dict", "$counter"):
            pairs = {self._key(pair): self.decode(pair[1]) for pair in self._pairs(body)}
            return Counter(pairs) if kind == "$counter" else pairs
        if kind == "$ndarray" and isinstance(body, dict):
            return self._array(body)
        raise self.fail(f"unknown marker {kind}")

    def _pairs(self, body: Any) -> list[list[Any]]:
        if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
            raise self.fail("a mapping that is not a list of [key, value] pairs")
        return body

    def _key(self, pair: list[Any]) -> Any:
        if not isinstance(pair[0], _SCALARS):
            raise self.fail(f"a mapping key of type {type(pair[0]).__name__}")
        return pair[0]

    def _array(self, body: dict[str, Any]) -> np.ndarray:
        try:
            dtype = np.dtype(str(body["dtype"]))
            if dtype.kind not in _NUMERIC_KINDS:
                raise ValueError(f"dtype {dtype}")
            return np.asarray(body["data"], dtype=dtype).reshape([int(n) for n in body["shape"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise self.fail(f"bad array: {exc}") from None
