"""The options of a pretraining run, from their one declaration (RunConfig's fields and each method's options):
the list `ssrr pretrain` offers, the config a set of typed options builds (preset, then resume), and the
reverse, the options that rebuild a config (`ssrr reproduce` launching `ssrr pretrain`).

A field not given (not typed) is left to the preset, to the saved run when resuming, or to the method (batch,
learning rate). The CLI and `ssrr reproduce` both go through `prepare`, so both resume the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from ssrr.config import RunConfig, merge_with_saved, saved_config
from ssrr.declare import Declared, declared, field_types, flag_of
from ssrr.errors import SsrrError
from ssrr.methods import METHODS  # importing the package registers every built-in method
from ssrr.methods.base import method_class, option_fields
from ssrr.presets import apply_preset

# Written out by `config_args` even at their default, so a printed command reads on its own.
ALWAYS_WRITTEN = ("method", "dataset", "backbone", "epochs", "seed", "out", "name", "shards_root")
ImageSize = Callable[[RunConfig], tuple[int, int]]


@dataclass(frozen=True)
class RunOption:
    """One `ssrr pretrain` option: a RunConfig field (`method` None) or an option of one method."""

    name: str  # the field's name: `time_budget_s`, or `loss` within simclr's options
    flag: str  # `--time-budget`, `--simclr-loss`
    hint: Any  # the field's type (`int | None`, `Literal[...]`)
    default: Any
    how: Declared
    method: str | None = None

    @property
    def param(self) -> str:
        """The command's parameter name: the flag as a Python name (`time_budget`, `simclr_loss`)."""
        return self.flag.removeprefix("--").replace("-", "_")

    def args(self, value: Any) -> list[str]:
        """The command-line words that give this option `value` (nothing for None: not given)."""
        if value is None:
            return []
        if isinstance(value, bool):
            if self.how.negative:
                return [self.flag if value else "--no-" + self.flag.removeprefix("--")]
            return [self.flag] if value else []
        if isinstance(value, list):
            return [word for item in value for word in (self.flag, str(item))]
        return [self.flag, self.how.show(value) if self.how.show else str(value)]


def run_options() -> list[RunOption]:
    """Every option of `ssrr pretrain` that sets the run config: RunConfig's fields, then each method's options."""
    found = []
    for owner, cls in [(None, RunConfig), *((name, METHODS[name].options_type) for name in _methods())]:
        hints = field_types(cls)  # type: ignore[arg-type]
        for item in fields(cls):  # type: ignore[arg-type]
            how = declared(item)
            if how is not None:
                default = item.default_factory() if callable(item.default_factory) else item.default
                found.append(RunOption(item.name, flag_of(item), hints[item.name], default, how, owner))
    return found


def _methods() -> list[str]:
    """The registered methods that declare options."""
    return sorted(name for name in METHODS if option_fields(METHODS[name]))


def config_from_options(
    values: Mapping[str, Any], typed: set[str], image_size: ImageSize, *, resume: bool = False
) -> RunConfig:
    """The run config of a command line: `values` by parameter name, of which those in `typed` were typed (the
    others are left to the preset, the saved run or the method). Typed values are checked as typed."""
    given: dict[str, Any] = {}
    chosen: dict[str, dict[str, Any]] = {}
    flags: dict[str, str] = {}
    for spec in run_options():
        if spec.param not in typed:
            continue
        value = values[spec.param]
        if spec.how.parse is not None and isinstance(value, str):
            value = spec.how.parse(value)
        if spec.method is None:
            given[spec.name] = list(value) if isinstance(value, (list, tuple)) else value
        else:
            chosen.setdefault(spec.method, {})[spec.name] = value
            flags[spec.method] = spec.flag
    config = RunConfig(**given).validate()
    run_method = _run_method(config, "method" in given, resume)
    for method, flag in flags.items():
        if method != run_method:
            raise SsrrError(f"{flag} is an option of --method {method}, not of {run_method}")
    if run_method in chosen:
        config = replace(config, method_options=chosen[run_method])
        given["method_options"] = chosen[run_method]
    return prepare(config, set(given), image_size, resume=resume)


def _run_method(config: RunConfig, typed: bool, resume: bool) -> str:
    """The method the run will have: the typed one, else, resuming, the saved run's."""
    saved = None if typed or not resume else saved_config(config)
    return config.method if saved is None else saved.method


def prepare(config: RunConfig, given: set[str], image_size: ImageSize, *, resume: bool) -> RunConfig:
    """The config a run starts (or resumes) with: its preset applied to the fields not `given`, then, resuming,
    the saved config for them; checked, the method's options included, before anything is written."""
    config = apply_preset(config.validate(), given, lambda: image_size(config))
    config = _recalibrate_small_views(config, given, image_size)
    if resume:
        config = merge_with_saved(config, given)
    method_class(config.method).read_options(config)
    return config.validate()


def _recalibrate_small_views(config: RunConfig, given: set[str], image_size: ImageSize) -> RunConfig:
    """BatchNorm recalibration on where the last epoch's views are smaller than the images and it was not typed:
    the running statistics of small crops do not describe the full-size images the backbone is then evaluated on
    (one epoch of 96-px views of 224-px images, seeds 1 and 2: 19.0 and 12.0% linear top-1 on validation
    without, 32.5 and 26.0% with; docs/benchmarks.md, "Your own images")."""
    if "bn_recalibrate" in given or config.bn_recalibrate or not (config.view_size or config.view_size_end):
        return config
    side = min(image_size(config))
    return replace(config, bn_recalibrate=config.view_sides(side)[1] < side)


def _written(config: RunConfig) -> list[tuple[RunOption, Any]]:
    """The options (with their values) that rebuild `config`: those off their default, the always-written, the
    method's options it holds, and under a preset other than the paper's every field it has (a preset fills
    whatever is not typed)."""
    everything = config.preset != "paper"
    written = []
    for spec in run_options():
        if spec.method is None:
            value = getattr(config, spec.name)
            if value is None or (value == spec.default and not everything and spec.name not in ALWAYS_WRITTEN):
                continue
        elif spec.method == config.method and spec.name in config.method_options:
            value = config.method_options[spec.name]
        else:
            continue
        written.append((spec, value))
    return written


def config_args(config: RunConfig) -> list[str]:
    """The `ssrr pretrain` options that make exactly this config (the reverse of `config_from_options`)."""
    return [word for spec, value in _written(config) for word in spec.args(value)]


def given_fields(config: RunConfig) -> set[str]:
    """The RunConfig fields `config_args` gives (what a launched `ssrr pretrain` takes as typed)."""
    written = _written(config)
    given = {spec.name for spec, _ in written if spec.method is None}
    return given | ({"method_options"} if any(spec.method for spec, _ in written) else set())


def dataset_image_size(config: RunConfig) -> tuple[int, int]:
    """(H, W) of the run's dataset, for a preset whose view side follows the images'."""
    from ssrr.data.formats import load_manifest
    from ssrr.data.remote import resolve_dataset_any

    return load_manifest(resolve_dataset_any(config.dataset, config.shards_root, show=False)).image_size
