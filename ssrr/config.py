"""One typed config object per run, saved beside its outputs as `config.json`.

`RunConfig` is the one source of the run's settings: each field declares its `ssrr pretrain` option once
(flag, help, help group, limits; `ssrr.declare`), a choice is a `Literal`, and None means "not given" (the
preset's or the method's default applies, e.g. `batch`: 64 relational, 128 the baselines). The options of one
method live with the method (`ssrr.methods`) and are saved under the method's name: `"simclr": {"loss": ...}`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from ssrr.declare import check_fields, field_types, fits, option
from ssrr.errors import SsrrError
from ssrr.options import Limit, backbone_tag, check_name, parse_duration, require_tracker
from ssrr.precision import Precision

CONFIG_FILE = "config.json"

# Settings that define the model: a checkpoint can only be resumed or loaded with the same values.
MODEL_DEFINING = ("method", "backbone", "stem", "head", "aggregation")
# Fields where an older config.json wrote 0 for "not given" (now None).
ZERO_WAS_UNSET = (
    "batch", "view_size", "view_size_end", "max_steps", "time_budget_s", "knn_every", "eval_every", "num_threads",
)  # fmt: skip
# Method options an older config.json kept flat: key -> (method, option). New method options are never flat.
FLAT_METHOD_OPTIONS = {
    "simclr_loss": ("simclr", "loss"),
    "infomax_prior": ("infomax", "prior"),
    "infomax_critic": ("infomax", "critic"),
    "supervised_augment": ("supervised", "augment"),
    "labels": ("supervised", "labels"),
}
Device = Literal["auto", "cpu", "cuda"]
Head = Literal["relation", "dot", "encoder-dot"]  # ssrr/models/heads.py
POSITIVE = Limit(1, 2**31 - 1)
SIDE = Limit(1, 8192)
MONTH_S = 30 * 86400.0


def _seconds(value: float) -> str:
    return f"{value:g}s"


@dataclass
class RunConfig:
    """Everything a pretraining run depends on. Defaults are the paper's (ResNet-32, K=32, M=64, 200 epochs)."""

    # method
    preset: Literal["paper", "fast"] = option(
        "paper",
        "paper: the paper's settings (below). fast: the same method tuned for accuracy per second (docs/fast.md); "
        "options typed here override it.",
        "method",
    )
    method: str = option(
        "relational", "relational, or a baseline: simclr, rotation, deepcluster, infomax, supervised.", "method"
    )
    k: int = option(32, "Augmentations (views) per image (relational).", "method", flag="--k", limit=Limit(2, 1024))
    loss: Literal["focal", "bce"] = option("focal", "relational: focal (gamma 2, alpha 0.5) or bce.", "method")
    # data
    dataset: str = option("cifar100", "Dataset name under --shards-root, or a shard folder.", "data")
    split: str = option(
        "train",
        "Split to train on; + joins splits: train+unlabeled (STL-10), train+val (all of train after --val).",
        "data",
    )
    shards_root: str = option("shards", "Where dataset names are looked up.", "data")
    crop_min: float = option(
        0.08, "Smallest area fraction of the random resized crop (paper: 0.08).", "data", limit=Limit(0, 1, above=True)
    )
    view_size: int | None = option(
        None,
        "Side of the first epoch's training views in pixels (default: the images' own; evaluation stays there).",
        "data",
        limit=SIDE,
    )
    view_size_end: int | None = option(
        None, "Side of the last epoch's views, linear in between (default: --view-size).", "data", limit=SIDE
    )
    num_threads: int | None = option(
        None, "DALI threads (default: the run's thread plan, timed once per machine: ssrr/threads.py).", "data",
        limit=POSITIVE,
    )  # fmt: skip
    threads: int | None = option(
        None, "torch threads on the CPU (default: the run's thread plan, timed once per machine).", "model",
        limit=POSITIVE,
    )  # fmt: skip
    skip_corrupt: bool = option(False, "Skip (and count) corrupt samples.", "data", negative=False)
    # model
    backbone: str = option(
        "resnet32",
        "The paper's: conv4, resnet8, resnet32, resnet56, resnet34. Any torchvision classification model as "
        "tv:NAME (tv:resnet18, tv:resnet50, tv:vit_b_16, ...) or timm model as timm:NAME (pip install "
        '"ssrr[timm]"), its classifier removed; never downloaded weights.',
        "model",
    )
    stem: Literal["default", "cifar"] = option(
        "default",
        "tv:/timm: ResNet-style backbones: default (their own), or cifar (3x3 conv stride 1, no max-pool) for "
        "32-64 px images.",
        "model",
    )
    head: Head = option("relation", "relation, dot or encoder-dot (the seed's head ablation).", "model")
    aggregation: Literal["cat", "sum", "mean", "max"] = option("cat", "cat, sum, mean or max.", "model")
    precision: Precision = option(
        "fp32", "auto, fp32, bf16 (forced, even where emulated) or fp16 (with loss scaling). Overrides --amp.", "model"
    )
    channels_last: bool = option(True, "NHWC memory format.", "model")
    compile: bool = option(False, "torch.compile the backbone.", "model")
    # optimisation
    batch: int | None = option(
        None,
        "Images per step per process (M; default: the method's, 64 relational, 128 the baselines, as the authors).",
        "optimisation",
        limit=Limit(2, 65_536),
    )
    epochs: int = option(200, "Epochs (the paper: 200; 300 for STL-10).", "optimisation", limit=Limit(1, 1_000_000))
    lr: float | None = option(
        None,
        "Learning rate (default: the method's: Adam 1e-3, relational with a tv:/timm: backbone 1e-4; infomax "
        "Adam 1e-4; supervised SGD 0.1).",
        "optimisation",
    )
    weight_decay: float = option(0.0, "Weight decay.", "optimisation")
    lr_schedule: Literal["constant", "cosine"] = option(
        "constant",
        "constant (the paper's), or cosine: decay to 0 at the last step (after any warm-up).",
        "optimisation",
    )
    warmup_epochs: float = option(0.0, "Linear learning-rate warm-up over this many epochs.", "optimisation")
    grad_accum: int = option(1, "Gradient accumulation steps.", "optimisation", limit=Limit(1, 65_536))
    sync_bn: bool = option(False, "Synchronise BatchNorm across processes.", "optimisation")
    bn_recalibrate: bool = option(
        False,
        "After the last epoch, recompute the backbone's BatchNorm statistics on the clean training images (on "
        "by default when the views are smaller than the images, --view-size).",
        "optimisation",
    )
    max_steps: int | None = option(
        None, "Stop after N optimizer steps in total (default: all epochs).", "optimisation", limit=POSITIVE
    )
    time_budget_s: float | None = option(
        None,
        "End pretraining within this time (900s, 15m, 0.25h): the run measures its pace over its first steps "
        "and plans its steps and schedule to fit; --epochs then only caps it. --preset fast: 15m unless --epochs "
        "is typed.",
        "optimisation",
        flag="--time-budget",
        limit=Limit(0, MONTH_S, above=True),
        parse=parse_duration,
        show=_seconds,
    )
    # run
    seed: int = option(1, "Seed for weights, data order and augmentations.", "run")
    out: str = option("runs", "Folder of runs.", "run")
    name: str = option("", "Run name (default: METHOD-BACKBONE-DATASET-sSEED).", "run")
    device: Device = option("auto", "auto, cpu or cuda.", "run")
    keep_checkpoints: int = option(2, "Checkpoints kept (the newest N).", "run", limit=POSITIVE)
    checkpoint_every: int = option(1, "Checkpoint every N epochs.", "run", limit=POSITIVE)
    knn_every: int | None = option(
        None, "k-NN probe on --probe-split every N epochs and after the last (default: never).", "run",
        limit=POSITIVE,
    )  # fmt: skip
    eval_every: int | None = option(
        None,
        "Linear protocol on --probe-split every N epochs and after the last, with the time (default: never).",
        "run",
        limit=POSITIVE,
    )
    probe_split: str = option(
        "",
        "Split the --knn-every/--eval-every probes score (default: the validation split of `ssrr shard --val` "
        "when the run does not train on it, else the held-out test split).",
        "run",
    )
    log_with: list[str] = option([], "accelerate tracker: tensorboard or wandb (repeatable).", "run")
    log_samples: bool = option(False, "Record each rank's sample indices per step.", "run", negative=False)
    # The options of the run's method (ssrr/methods: each method's `Options`), saved under the method's name.
    method_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> RunConfig:
        """Every declared field against its type, choices and limit (one line naming the flag)."""
        check_fields(self)
        if self.name:
            check_name(self.name)
        require_tracker(self.log_with)
        return self

    @property
    def batch_size(self) -> int:
        """M, images per step per process, once the method's default is filled in (`with_method_defaults`)."""
        if self.batch is None:
            raise SsrrError("the run's batch is not filled in: its method's default comes first")
        return self.batch

    def view_sides(self, image_side: int) -> tuple[int, int]:
        """(first, last) side of the training views for images of side `image_side` (evaluation stays there)."""
        first = self.view_size or image_side
        return first, self.view_size_end or first

    def resolved(self) -> RunConfig:
        """A copy with a run name filled in."""
        if self.name:
            return replace(self)
        dataset = Path(self.dataset).name
        return replace(self, name=f"{self.method}-{backbone_tag(self.backbone)}-{dataset}-s{self.seed}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_json(self) -> dict[str, Any]:
        """The config as config.json holds it: flat fields, the method's options under the method's name."""
        data = asdict(self)
        options = data.pop("method_options")
        if options:
            data[self.method] = options
        return data

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(run_dir / CONFIG_FILE)

    @classmethod
    def load(cls, run_dir: Path | str) -> RunConfig:
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise SsrrError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except ValueError as exc:
            raise SsrrError(f"{path}: malformed config ({exc})") from exc
        if not isinstance(data, dict):
            raise SsrrError(f"{path}: malformed config (not a JSON object)")
        try:
            return cls.from_json(data)
        except SsrrError as exc:
            raise SsrrError(f"{path}: malformed config ({exc})") from None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """A config from config.json's object, also one written by an older version (0 for "not given", flat
        method options, `amp`)."""
        data = dict(data)
        if "precision" not in data and isinstance(data.get("amp"), bool):  # run folders from before --precision
            data["precision"] = "auto" if data["amp"] else "fp32"
        for key in ZERO_WAS_UNSET:
            if data.get(key) == 0 and not isinstance(data.get(key), bool):
                data[key] = None
        method = data.get("method", cls.method)
        options = data.get(method) if isinstance(method, str) else None
        if options is None:
            options = {
                name: data[key] for key, (owner, name) in FLAT_METHOD_OPTIONS.items() if owner == method and key in data
            }
        hints = field_types(cls)
        values: dict[str, Any] = {"method_options": options}
        for item in fields(cls):
            if item.name in data and item.name != "method_options":
                if not fits(data[item.name], hints[item.name]):
                    raise SsrrError(f"{item.name} = {data[item.name]!r}")
                values[item.name] = data[item.name]
        if not fits(options, hints["method_options"]):
            raise SsrrError(f"{method} = {options!r}")
        return cls(**values)

    def model_mismatch(self, other: RunConfig) -> list[str]:
        """The model-defining settings on which two configs disagree, as `name: a != b`."""
        return [
            f"{key}: {getattr(self, key)} != {getattr(other, key)}"
            for key in MODEL_DEFINING
            if getattr(self, key) != getattr(other, key)
        ]


def saved_config(config: RunConfig) -> RunConfig | None:
    """The config saved in the run folder that `config` names, or None when there is none (yet)."""
    try:
        return RunConfig.load(config.resolved().run_dir)
    except SsrrError:
        return None


def merge_with_saved(config: RunConfig, given: set[str]) -> RunConfig:
    """The config a resumed run continues with: the saved one, except the fields in `given` (typed on the
    command line, or set by `ssrr reproduce`), which this `config` sets. `method_options` counts as given when
    any of them is; they add to the saved ones of the same method. Without a saved run (nothing to resume)
    the config itself."""
    resolved = config.resolved()
    saved = saved_config(resolved)
    if saved is None:  # no saved run yet: --resume starts it
        return config
    explicit = {item.name: getattr(config, item.name) for item in fields(RunConfig) if item.name in given}
    method = config.method if "method" in given else saved.method
    if "method_options" in explicit and saved.method == method:
        explicit["method_options"] = {**saved.method_options, **config.method_options}
    # The folder the config came from, never its own record of it.
    return replace(saved, **{**explicit, "out": config.out, "name": resolved.name})
