"""One typed config object per run, saved beside its outputs as `config.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ssrr.errors import SsrrError
from ssrr.options import backbone_tag, check_name, check_number, check_stem, require_tracker
from ssrr.precision import check_precision
from ssrr.presets import check_preset
from ssrr.schedules import check_schedule

CONFIG_FILE = "config.json"

# Settings that define the model: a checkpoint can only be resumed or loaded with the same values.
MODEL_DEFINING = ("method", "backbone", "stem", "head", "aggregation")
# Numeric settings, each checked against its limit in `ssrr.options.LIMITS`.
NUMERIC = (
    "k", "batch", "epochs", "lr", "weight_decay", "grad_accum", "seed", "keep_checkpoints", "checkpoint_every",
    "max_steps", "knn_every", "eval_every", "num_threads", "threads", "warmup_epochs", "view_size", "view_size_end",
)  # fmt: skip


@dataclass
class RunConfig:
    """Everything a pretraining run depends on. Defaults are the paper's (ResNet-32, K=32, M=64, 200 epochs)."""

    method: str = "relational"
    preset: str = "paper"  # paper | fast: where the defaults below came from (ssrr/presets.py)
    dataset: str = "cifar100"  # a name under shards/ or a shard folder
    split: str = "train"  # the split trained on; "unlabeled" for STL-10 (the authors' pretraining set)
    backbone: str = "resnet32"  # one of the paper's, or tv:NAME / timm:NAME (ssrr/models/external.py)
    stem: str = "default"  # tv:/timm: ResNet-style backbones: default, or cifar (3x3 stride 1, no max-pool)
    k: int = 32  # augmentations (views) per image, relational only
    batch: int = 0  # M images per step per process; 0: the method's (64 relational, 128 the baselines, as the authors)
    epochs: int = 200
    lr: float | None = None  # None: the method's own (Adam 1e-3; infomax Adam 1e-4; supervised SGD 0.1)
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # constant (the paper's) | cosine (decay to 0 at the last step): ssrr/schedules.py
    warmup_epochs: float = 0.0  # linear warm-up of the learning rate over this many epochs
    crop_min: float = 0.08  # smallest area fraction of the random resized crop (the paper's 0.08)
    view_size: int = 0  # side of the first epoch's training views in pixels (0: the images' own side)
    view_size_end: int = 0  # side of the last epoch's views, linear in between (0: view_size throughout)
    bn_recalibrate: bool = False  # after the last epoch: BatchNorm statistics of the clean training images
    loss: str = "focal"  # relational: focal (gamma 2, alpha 0.5, as the public code) or bce
    aggregation: str = "cat"
    head: str = "relation"  # relation | dot | encoder-dot (the seed's head ablation)
    labels: str = "fine"  # supervised: fine or coarse labels
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (`--amp`): see ssrr/precision.py
    channels_last: bool = True
    compile: bool = False
    grad_accum: int = 1
    sync_bn: bool = False  # multi-process: synchronise BatchNorm statistics across ranks
    seed: int = 1
    out: str = "runs"
    name: str = ""  # resolved by `resolved()` when empty
    shards_root: str = "shards"
    keep_checkpoints: int = 2
    checkpoint_every: int = 1  # epochs
    max_steps: int = 0  # stop after this many optimizer steps in total (0: run all epochs)
    time_budget_s: float = 0.0  # end pretraining within this many seconds (0: none): ssrr/train/budget.py
    knn_every: int = 0  # k-NN probe (on --probe-split) every N epochs and after the last (0: never)
    eval_every: int = 0  # the linear protocol (on --probe-split) every N epochs and after the last (0: never)
    probe_split: str = ""  # the split those probes score ("": the validation split, else the held-out one)
    log_with: list[str] = field(default_factory=list)  # accelerate trackers: tensorboard, wandb
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0  # DALI worker threads (0: the run's thread plan, ssrr/threads.py)
    threads: int = 0  # torch intra-op threads on the CPU (0: the run's thread plan)
    skip_corrupt: bool = False  # skip (and count) corrupt samples instead of stopping with an error
    log_samples: bool = False  # write each rank's sample indices per step (samples-rank<R>.jsonl)
    # The authors' form of what ssrr deliberately does otherwise (docs/fidelity.md), one option away:
    simclr_loss: str = "nt-xent"  # simclr: nt-xent (mean of -log p) or official (-log of the mean p)
    infomax_prior: str = "adversarial"  # infomax: adversarial (gradient reversal) or official (one loss for both)
    infomax_critic: str = "concat"  # infomax: concat (the authors' concatenate-and-convolve) or dot (encode-and-dot)
    supervised_augment: str = "crop-flip"  # supervised: crop-flip, or affine-erase (the authors' STL-10 transform)

    def validate(self) -> RunConfig:
        if self.method == "relational" and self.k < 2:
            raise SsrrError(f"--k must be at least 2 (pairs of views), got {self.k}")
        if self.batch != 0 and self.batch < 2:
            raise SsrrError(f"--batch must be at least 2 (no collision-free shuffle of one image), got {self.batch}")
        for name in ("epochs", "grad_accum", "keep_checkpoints", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise SsrrError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in NUMERIC:
            check_number(name, getattr(self, name))  # finite and in range: `--lr nan` never reaches torch
        if self.name:
            check_name(self.name)
        require_tracker(self.log_with)
        if self.simclr_loss not in ("nt-xent", "official"):
            raise SsrrError(f"--simclr-loss must be nt-xent or official, got {self.simclr_loss!r}")
        if self.infomax_prior not in ("adversarial", "official"):
            raise SsrrError(f"--infomax-prior must be adversarial or official, got {self.infomax_prior!r}")
        if self.infomax_critic not in ("concat", "dot"):
            raise SsrrError(f"--infomax-critic must be concat or dot, got {self.infomax_critic!r}")
        if self.supervised_augment not in ("crop-flip", "affine-erase"):
            raise SsrrError(f"--supervised-augment must be crop-flip or affine-erase, got {self.supervised_augment!r}")
        if self.labels not in ("fine", "coarse"):
            raise SsrrError(f"--labels must be fine or coarse, got {self.labels!r}")
        check_schedule(self.lr_schedule)
        if not 0.0 <= self.time_budget_s <= 30 * 86400:
            raise SsrrError(f"--time-budget must be positive and at most 30 days, got {self.time_budget_s} s")
        if not 0.0 < self.crop_min <= 1.0:
            raise SsrrError(f"--crop-min must be in (0, 1], got {self.crop_min}")
        check_preset(self.preset)
        check_stem(self.stem)
        check_precision(self.precision)
        if self.device not in ("auto", "cpu", "cuda"):
            raise SsrrError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        return self

    def view_sides(self, image_side: int) -> tuple[int, int]:
        """(first, last) side of the training views for images of side `image_side` (evaluation stays there)."""
        first = self.view_size or image_side
        return first, self.view_size_end or first

    def resolved(self) -> RunConfig:
        """A copy with a run name filled in."""
        data = asdict(self)
        if not data["name"]:
            dataset = Path(self.dataset).name
            data["name"] = f"{self.method}-{backbone_tag(self.backbone)}-{dataset}-s{self.seed}"
        return RunConfig(**data)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".{CONFIG_FILE}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
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
        if "precision" not in data and isinstance(data.get("amp"), bool):  # run folders from before --precision
            data["precision"] = "auto" if data["amp"] else "fp32"
        defaults = cls()
        values = {}
        for key in {f.name for f in fields(cls)} & set(data):
            if not _same_type(data[key], getattr(defaults, key), key):
                raise SsrrError(f"{path}: malformed config ({key} = {data[key]!r})")
            values[key] = data[key]
        return cls(**values)

    def model_mismatch(self, other: RunConfig) -> list[str]:
        """The model-defining settings on which two configs disagree, as `name: a != b`."""
        return [
            f"{key}: {getattr(self, key)} != {getattr(other, key)}"
            for key in MODEL_DEFINING
            if getattr(self, key) != getattr(other, key)
        ]


def _same_type(value: Any, default: Any, key: str) -> bool:
    """Whether a value read from config.json has the type of the field's default (ints pass as floats)."""
    if key == "lr":
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, type(default)) and not isinstance(value, bool)
