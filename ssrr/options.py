"""What every option may hold, checked before a command writes anything.

- Numbers: each numeric option is finite and inside its `Limit` (by option name, `LIMITS`; an option not
  listed is a count: a whole number from 0 to 2**31-1, or a float from 0 to 1e6). `check_numbers` applies it to
  a command's parsed options; the command line runs it before every command (see `ssrr.cli.common`).
- Names: a run or dataset name is one plain folder name (`check_name`): it can never point outside `--out`.
- Optional packages: an option that needs a package not installed (`--log-with tensorboard`, `s3://` shards
  without fsspec) is refused with the extra to install (`require_tracker`, `require_scheme`).
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ssrr.errors import SsrrError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Limit:
    """A closed range [low, high]; `above` makes the low end open (a rate must be > 0)."""

    low: float
    high: float
    above: bool = False

    def describe(self) -> str:
        low = f"> {_number(self.low)}" if self.above else f">= {_number(self.low)}"
        return f"{low} and <= {_number(self.high)}"

    def check(self, flag: str, value: float) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise SsrrError(f"{flag} must be a finite number, got {value}")
        if value < self.low or (self.above and value == self.low) or value > self.high:
            raise SsrrError(f"{flag} must be {self.describe()}, got {value}")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


COUNT = Limit(0, INT_MAX)
AT_LEAST_ONE = Limit(1, INT_MAX)
AMOUNT = Limit(0, 1e6)  # an unlisted float: finite, not negative, not absurd
RATE = Limit(0, 10, above=True)  # a learning rate: larger ones only diverge

LIMITS: dict[str, Limit] = {
    "lr": RATE,
    "backbone_lr": RATE,
    "head_lr": RATE,
    "weight_decay": Limit(0, 1),
    "temperature": Limit(0, 100, above=True),
    "perplexity": Limit(0, 10_000, above=True),
    "target_top1": Limit(0, 100, above=True),  # a top-1 accuracy in %
    "seed": Limit(0, 2**32 - 1),  # numpy's seeds are 32-bit
    "k": Limit(1, 1024),  # views per image (pretrain: >= 2, see RunConfig.validate) or k-NN neighbours
    "batch": Limit(0, 65_536),  # pretrain: >= 2 (RunConfig's own limit; not given: the method's); eval checks >= 1
    "epochs": Limit(1, 1_000_000),
    "linear_epochs": Limit(1, 1_000_000),
    "grad_accum": Limit(1, 65_536),
    "keep_checkpoints": AT_LEAST_ONE,
    "checkpoint_every": AT_LEAST_ONE,
    "processes": Limit(1, 1024),
    "machines": Limit(1, 65_536),
    "machine_rank": Limit(0, 65_535),  # below --machines: checked with it (ssrr.launch.Machines)
    "main_port": Limit(1, 65_535),
    "workers": Limit(1, 1024),
    "num_threads": Limit(0, 1024),
    "shard_size": Limit(1, 100_000_000),
    "size": Limit(1, 8192),
    "view_size": Limit(1, 8192),  # pretrain: not given is the images' own side
    "view_size_end": Limit(1, 8192),  # pretrain: not given is view_size's
    "train_per_class": Limit(1, 100_000),
    "test_per_class": Limit(1, 100_000),
    "repeats": Limit(1, 10_000),
    "steps": Limit(1, 1_000_000),
    "iterations": Limit(1, 1_000_000),
    "quality": Limit(1, 100),
}


def limit_of(name: str, value: float) -> Limit:
    """The limit of option `name` (python name, e.g. `weight_decay`)."""
    return LIMITS.get(name, COUNT if isinstance(value, int) else AMOUNT)


def check_number(name: str, value: Any) -> None:
    """Refuse a non-finite or out-of-range value of option `name`; None (not given) and non-numbers pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    limit_of(name, value).check(flag(name), value)


def check_numbers(params: Mapping[str, Any]) -> None:
    """`check_number` on every numeric value (or list of them) of a command's options."""
    for name, value in params.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            check_number(name, item)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_name(name: str, option: str = "--name") -> str:
    """A run or dataset name is one plain folder name: letters, digits, '.', '_', '+', '-' (not first)."""
    if not NAME_PATTERN.fullmatch(name):
        raise SsrrError(f"{option} {name!r}: use letters, digits, '.', '_', '+' and '-' (one folder name)")
    return name


STEMS = ("default", "cifar")  # --stem: the model's own first layers, or CIFAR's (3x3 stride 1, no max-pool)


def check_stem(stem: str) -> str:
    if stem not in STEMS:
        raise SsrrError(f"--stem must be one of {', '.join(STEMS)}, got {stem!r}")
    return stem


def backbone_tag(backbone: str) -> str:
    """A backbone name as part of a file or folder name: `tv:resnet18` -> `tv-resnet18`."""
    return backbone.replace(":", "-").replace("@", "-")


@dataclass(frozen=True)
class Extra:
    """An optional feature: the modules it imports and the pyproject extra that installs them."""

    modules: tuple[str, ...]
    extra: str

    def missing(self) -> list[str]:
        return [m for m in self.modules if not _importable(m)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules, or a broken package
        return False


TRACKERS: dict[str, Extra] = {
    "tensorboard": Extra(("tensorboard",), "tensorboard"),
    "wandb": Extra(("wandb",), "wandb"),
}
SCHEMES: dict[str, Extra] = {
    "s3": Extra(("fsspec", "s3fs"), "s3"),
    "gs": Extra(("fsspec", "gcsfs"), "gcs"),
    "gcs": Extra(("fsspec", "gcsfs"), "gcs"),
    "az": Extra(("fsspec", "adlfs"), "azure"),
    "abfs": Extra(("fsspec", "adlfs"), "azure"),
}

# Optional packages of single features: timm:NAME backbones, `ssrr export --format onnx`, `ssrr embed` to .parquet.
FEATURES: dict[str, Extra] = {
    "timm": Extra(("timm",), "timm"),
    "onnx": Extra(("onnx",), "onnx"),
    "parquet": Extra(("pyarrow",), "parquet"),
}


def _require(extra: Extra, what: str) -> None:
    missing = extra.missing()
    if missing:
        packages = f"the optional {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}"
        raise SsrrError(f'{what} needs {packages}, not installed: pip install "ssrr[{extra.extra}]"')


def require_feature(name: str, what: str) -> None:
    """`what` needs the optional packages of `FEATURES[name]`: refused in one line naming the extra to install."""
    _require(FEATURES[name], what)


def require_tracker(names: Iterable[str]) -> None:
    """Every `--log-with` tracker is known and importable."""
    for name in names:
        if name not in TRACKERS:
            raise SsrrError(f"--log-with {name!r}: one of {', '.join(TRACKERS)}")
        _require(TRACKERS[name], f"--log-with {name}")


def require_scheme(url: str) -> None:
    """A URL's scheme can be read: http(s) always; s3://, gs://, az:// with their fsspec packages."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("", "http", "https", "file"):
        return
    extra = SCHEMES.get(scheme, Extra(("fsspec",), "remote"))
    _require(extra, f"{url}: the {scheme}:// scheme")


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*")


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """Seconds in `900`, `900s`, `15m` or `0.25h`; a one-line error naming `flag` otherwise."""
    match = _DURATION.fullmatch(text)
    seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"] if match else 0.0
    if not match or not 0 < seconds <= 30 * 86400:
        raise SsrrError(f"{flag} must be a duration such as 900s, 15m or 0.25h (up to 30 days), got {text!r}")
    return seconds
