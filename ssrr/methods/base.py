"""The method interface and its registry. A method is a short class that overrides only what differs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import nn

from ssrr.config import RunConfig
from ssrr.declare import check_fields, declared
from ssrr.errors import SsrrError
from ssrr.models.backbones import Backbone
from ssrr.precision import Execution
from ssrr.schedules import build_lr_scheduler

if TYPE_CHECKING:
    from ssrr.pipelines.loader import Batch
    from ssrr.pipelines.recipes import Recipe


@dataclass
class StepOutput:
    """What one training step reports: the loss to minimise and scalar metrics to log."""

    loss: torch.Tensor
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


@dataclass
class EpochContext:
    """What a method may need at the start of an epoch (DeepCluster re-clusters the training set)."""

    epoch: int
    make_loader: Callable[..., Any]  # make_loader(recipe, split=..., training=...) -> ViewLoader
    execution: Execution  # how the run's forward passes run (device, precision, memory format): use it for every pass
    num_classes: int
    image_size: tuple[int, int] | None = None  # (H, W) of the training images, when known
    mean: tuple[float, float, float] | None = None  # the normalisation of the views, when known
    std: tuple[float, float, float] | None = None

    @property
    def device(self) -> torch.device:
        return self.execution.device


class Method(nn.Module):
    """A self-supervised (or supervised) pretraining method around a backbone.

    Subclasses set `name`, build their heads in `__init__`, give the pipeline recipe and compute the loss in
    `forward(batch)`. The trainer owns the loop, precision, devices, checkpoints and logging.
    """

    name: ClassVar[str]
    uses_labels: ClassVar[bool] = False
    default_lr: ClassVar[float] = 1e-3  # the learning rate when the run does not set one
    default_batch: ClassVar[int] = 128  # images per step when the run does not set one (the authors' baselines)
    # The method's own options: a dataclass of `ssrr.declare.option` fields, each with its flag (`--simclr-loss`);
    # a run saves them under the method's name in config.json, `ssrr pretrain` offers them as options.
    options_type: ClassVar[type | None] = None

    def __init__(self, config: RunConfig, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.num_classes = num_classes
        self.options: Any = self.read_options(config)

    @classmethod
    def read_options(cls, config: RunConfig) -> Any:
        """The run's options of this method (its `options_type`, defaults filled in), checked; None without."""
        if cls.options_type is None:
            if config.method_options:
                raise SsrrError(f"--method {cls.name} has no options, got {', '.join(config.method_options)}")
            return None
        known = {item.name for item in fields(cls.options_type)}
        unknown = sorted(set(config.method_options) - known)
        if unknown:
            raise SsrrError(f"--method {cls.name} has no option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        options = cls.options_type(**config.method_options)
        check_fields(options)
        return options

    @classmethod
    def recipe(cls, config: RunConfig, image_size: tuple[int, int] | None = None) -> Recipe:
        """The pipeline recipe that produces this method's views (`image_size`: the training images' (H, W),
        for settings that scale with it, such as the crop padding)."""
        raise NotImplementedError

    @classmethod
    def check_data(cls, config: RunConfig, train_samples: int, num_classes: int) -> None:
        """Raise SsrrError if the training data cannot serve this method (checked before a run writes anything)."""

    def forward(self, batch: Batch) -> StepOutput:  # type: ignore[override]
        raise NotImplementedError

    def build_optimizer(self) -> torch.optim.Optimizer:
        """Adam on every parameter (the paper's setting for relational reasoning and most baselines)."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.config.weight_decay)

    @classmethod
    def default_rate(cls, config: RunConfig) -> float:
        """The learning rate of a run that does not set one (a method may make it depend on the backbone)."""
        return cls.default_lr

    @property
    def lr(self) -> float:
        """The run's learning rate, or this method's default for the run."""
        return self.default_rate(self.config) if self.config.lr is None else self.config.lr

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: Callable[[], int] | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The run's `--lr-schedule` and `--warmup-epochs`, stepped once per optimizer step (none for the paper's
        constant rate). `total_steps()`: the run's length when a time budget plans it (default: its epochs)."""
        warmup = round(self.config.warmup_epochs * steps_per_epoch)
        total = total_steps or self.config.epochs * steps_per_epoch
        return build_lr_scheduler(optimizer, self.config.lr_schedule, total, warmup)

    def on_epoch_start(self, context: EpochContext) -> None:
        """Hook for methods that need a pass over the data before each epoch (called on every rank)."""

    def epoch_marks(self) -> dict[str, str]:
        """Values of this rank that the epoch's record in metrics.jsonl lists per rank, so that state which must
        agree across ranks can be checked (DeepCluster: a hash of its cluster assignments)."""
        return {}

    @staticmethod
    def views_per_image(config: RunConfig) -> int:
        return 1

    def pairs_per_step(self, batch_size: int) -> int:
        """Relation pairs scored per step (0 for methods without pairs)."""
        return 0


MethodType = TypeVar("MethodType", bound=type[Method])
METHODS: dict[str, type[Method]] = {}


def register(cls: MethodType) -> MethodType:
    """Class decorator: make a method available to `ssrr pretrain --method NAME`."""
    METHODS[cls.name] = cls
    return cls


def with_method_defaults(config: RunConfig) -> RunConfig:
    """The config with what it leaves to the method filled in (learning rate, batch, the method's options, checked),
    as a run saves it."""
    cls = method_class(config.method)
    options = cls.read_options(config)
    return replace(
        config,
        lr=cls.default_rate(config) if config.lr is None else config.lr,
        batch=cls.default_batch if config.batch is None else config.batch,
        method_options={} if options is None else asdict(options),
    )


def option_fields(cls: type[Method]) -> list[Field[Any]]:
    """The declared options of a method (empty without)."""
    if cls.options_type is None:
        return []
    found = [item for item in fields(cls.options_type) if declared(item) is not None]
    for item in found:
        how = declared(item)
        if how is None or not how.flag:  # one method's `loss` must never be another's `--loss`
            raise SsrrError(f"{cls.name}: option {item.name} declares no flag (e.g. --{cls.name}-{item.name})")
    return found


def method_class(name: str) -> type[Method]:
    # Importing the package registers every built-in method.
    import ssrr.methods  # noqa: F401

    if name not in METHODS:
        raise SsrrError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]
