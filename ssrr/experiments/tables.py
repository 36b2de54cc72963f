"""The paper's experiments as scale-free descriptions: which tables, which pretrainings, which evaluations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ssrr.config import Head
from ssrr.eval.report import STANDARD_COLUMNS, method_label

# ------------------------------------------------------------------------------------------ constants

METHODS = ("relational", "simclr", "rotation", "deepcluster", "infomax", "supervised")
SELF_SUPERVISED = ("relational", "simclr", "rotation", "deepcluster", "infomax")
RANDOM = "random"  # the random-weights lower bound: no pretraining run
SEEDS = (1, 2, 3)
K_DEFAULT = 32
K_VALUES = (2, 4, 8, 16, 32)
FRACTIONS = (0.01, 0.1, 0.25, 0.5, 1.0)
HEADS = ("relation", "dot", "encoder-dot")
HEAD_ROWS = {"dot": "(a) dot product", "encoder-dot": "(b) Encoder + dot product", "relation": "(c) Relation module"}
COMPARED_BACKBONES = ("conv4", "resnet32")
EPOCHS = 200  # the paper's pretraining epochs
EPOCHS_STL10 = 300
# The authors' code pretrains the self-supervised methods on STL-10's 100k unlabeled images only (the paper's text
# says train + unlabeled); supervised training has labels for train only.
STL10_SPLIT: dict[str, str] = {method: "unlabeled" for method in SELF_SUPERVISED} | {"supervised": "train"}
# The authors train the supervised STL-10 baseline with flip, random affine and random erasing (ssrr.augment).
STL10_AUGMENT: dict[str, str] = {"supervised": "affine-erase"}
# Where ssrr's default form of a baseline differs from the authors' code (docs/fidelity.md), the tables run the
# authors' form (their comparison) and add the standard form as an extra row: method -> (options, row suffix).
AUTHORS_FORMS: dict[str, dict[str, str]] = {"simclr": {"loss": "official"}, "infomax": {"prior": "official"}}
STANDARD_FORMS: dict[str, tuple[dict[str, str], str]] = {
    "simclr": ({"loss": "nt-xent"}, "standard NT-Xent"),
    "infomax": ({"prior": "adversarial"}, "adversarial prior"),
}
TABLE_NAMES = ("table1", "table2", "k", "labels", "backbones")
NAMES = ("paper", *TABLE_NAMES)

THROUGHPUT_FILE = "throughput.json"  # written by ssrr.train.loop at the end of every pretraining call
BACKBONE_FILE = "backbone.safetensors"
EVAL_DIR = "eval"
REPORT_PREFIX = "report-"
FIGURE_FILES = {"k": "accuracy-vs-k.png", "labels": "accuracy-vs-labels.png", "backbones": "backbones.png"}
FIGURE_SIZE_IN = {"k": (8.0, 5.0), "labels": (8.0, 5.0), "backbones": (10.0, 5.0)}  # x FIGURE_DPI = pixels
FIGURE_DPI = 100  # as ssrr.eval.common: 800 x 500 and 1000 x 500 pixels
# Settings of a saved run that must equal the plan's (a different value is a conflict, never overwritten).
COMPARED_SETTINGS: tuple[str, ...] = ("method", "backbone", "k", "batch", "epochs", "lr", "loss", "aggregation")
COMPARED_SETTINGS += ("head", "seed", "max_steps", "split", "method_options")

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------- 1. descriptions


@dataclass(frozen=True)
class Evaluation:
    """One evaluation protocol on a dataset slot: linear, finetune or semi (linear at labelled fractions)."""

    protocol: str  # linear | finetune | semi
    dataset: str  # slot: cifar10, cifar100, tiny-imagenet, stl10
    labels: str = "fine"  # coarse: CIFAR-100's 20 superclasses (the grain protocol)
    fractions: tuple[float, ...] = ()  # semi only

    @property
    def tag(self) -> str:
        """`linear:cifar100`, `linear:cifar100/coarse`, `finetune:stl10`, `semi:cifar10@0.01,0.1,...`."""
        text = f"{self.protocol}:{self.dataset}" + ("/coarse" if self.labels == "coarse" else "")
        if self.fractions:
            text += "@" + ",".join(f"{f:g}" for f in self.fractions)
        return text


@dataclass(frozen=True)
class Pretraining:
    """A pretraining run, scale-free: the paper's settings (ResNet-32, K=32, M=64, 200 epochs)."""

    method: str
    dataset: str
    backbone: str = "resnet32"
    k: int = K_DEFAULT
    head: Head = "relation"
    epochs: int = EPOCHS
    split: str = "train"  # STL-10's self-supervised runs: unlabeled, as the authors' code
    supervised_augment: str = "crop-flip"  # supervised on STL-10: affine-erase, as the authors' code
    form: str = "authors"  # authors: the baseline as the authors' code runs it; standard: ssrr's default form

    def method_options(self) -> dict[str, str]:
        """The options of this form of the method (AUTHORS_FORMS, STANDARD_FORMS)."""
        if self.form == "standard":
            return dict(STANDARD_FORMS[self.method][0])
        return dict(AUTHORS_FORMS.get(self.method, {}))


@dataclass(frozen=True)
class Experiment:
    """A backbone (pretrained, or random when `pretraining` is None) and what is measured on it.

    `row` is its row in the table, `row_backbone` the Backbone column of that row when it differs from the
    backbone used (table 1 fine-tunes STL-10 on a ResNet-34 in the ResNet-32 rows, as the paper does).
    """

    row: str
    backbone: str
    pretraining: Pretraining | None
    evaluations: tuple[Evaluation, ...]
    row_backbone: str | None = None

    @property
    def method(self) -> str:
        return self.pretraining.method if self.pretraining else RANDOM


@dataclass(frozen=True)
class TableSpec:
    """A named table: its columns (report column names, see `ssrr.eval.report.columns_of`) and experiments."""

    name: str
    title: str
    columns: tuple[str, ...]
    experiments: tuple[Experiment, ...]
    note: str = ""


def linear(dataset: str, labels: str = "fine") -> Evaluation:
    return Evaluation("linear", dataset, labels)


def table1(k: int = K_DEFAULT) -> TableSpec:
    """Every method: linear evaluation on CIFAR-10, CIFAR-100, tiny-ImageNet; domain transfer both ways;
    grain (CIFAR-100-20); fine-tuning on STL-10 (ResNet-34, 300 epochs). Random weights: no fine-tuning."""
    experiments: list[Experiment] = []
    forms = [(method, "authors", method_label(method)) for method in METHODS]
    forms += [
        (method, "standard", f"{method_label(method)} ({suffix})") for method, (_, suffix) in STANDARD_FORMS.items()
    ]
    for method, form, label in forms:
        experiments += _table1_rows(method, form, label, k)
    experiments.append(
        Experiment(
            method_label(RANDOM),
            "resnet32",
            None,
            (linear("cifar10"), linear("cifar100"), linear("tiny-imagenet"), linear("cifar100", "coarse")),
        )
    )
    return TableSpec(
        "table1",
        "Table 1: methods x protocols (linear, domain transfer, grain, fine-tune)",
        ("Linear CIFAR-10", *STANDARD_COLUMNS),
        tuple(experiments),
        "Finetune STL-10 uses a ResNet-34 pretrained for 300 epochs (the paper's backbone for 96x96 images).",
    )


def _table1_rows(method: str, form: str, label: str, k: int) -> list[Experiment]:
    """One method's experiments in table 1, in one form (the authors' or the standard)."""
    stl10 = Pretraining(
        method, "stl10", "resnet34", k=k, epochs=EPOCHS_STL10, split=STL10_SPLIT[method],
        supervised_augment=STL10_AUGMENT.get(method, "crop-flip"), form=form,
    )  # fmt: skip
    return [
        Experiment(
            label, "resnet32", Pretraining(method, "cifar10", k=k, form=form), (linear("cifar10"), linear("cifar100"))
        ),
        Experiment(
            label,
            "resnet32",
            Pretraining(method, "cifar100", k=k, form=form),
            (linear("cifar100"), linear("cifar10"), linear("cifar100", "coarse")),
        ),
        Experiment(label, "resnet32", Pretraining(method, "tiny-imagenet", k=k, form=form), (linear("tiny-imagenet"),)),
        Experiment(label, "resnet34", stl10, (Evaluation("finetune", "stl10"),), row_backbone="resnet32"),
    ]


def table2(k: int = K_DEFAULT) -> TableSpec:
    """The head ablation: relational reasoning with (a) dot product, (b) encoder + dot, (c) relation module."""
    experiments: list[Experiment] = []
    for head in ("dot", "encoder-dot", "relation"):
        experiments += [
            Experiment(
                HEAD_ROWS[head],
                "resnet32",
                Pretraining("relational", "cifar10", k=k, head=head),
                (linear("cifar10"), linear("cifar100")),
            ),
            Experiment(
                HEAD_ROWS[head],
                "resnet32",
                Pretraining("relational", "cifar100", k=k, head=head),
                (linear("cifar100"), linear("cifar10"), linear("cifar100", "coarse")),
            ),
        ]
    columns = ("Linear CIFAR-10", "Linear CIFAR-100", "Domain 10->100", "Domain 100->10", "Grain CIFAR-100-20")
    return TableSpec("table2", "Table 2: head ablation (relational reasoning)", columns, tuple(experiments))


def k_table(k_values: Sequence[int] = K_VALUES) -> TableSpec:
    """Accuracy versus the number of augmentations K: relational ResNet-32 on CIFAR-10, linear evaluation."""
    experiments = tuple(
        Experiment(
            f"Relational Reasoning K={k}", "resnet32", Pretraining("relational", "cifar10", k=k), (linear("cifar10"),)
        )
        for k in k_values
    )
    return TableSpec("k", "Accuracy versus K (augmentations per image)", ("Linear CIFAR-10",), experiments)


def labels_table(k: int = K_DEFAULT, fractions: Sequence[float] = FRACTIONS) -> TableSpec:
    """Accuracy versus the labelled fraction of CIFAR-10 (linear on nested, class-balanced label subsets)."""
    semi = Evaluation("semi", "cifar10", fractions=tuple(fractions))
    experiments = (
        Experiment(method_label("relational"), "resnet32", Pretraining("relational", "cifar10", k=k), (semi,)),
        Experiment(method_label(RANDOM), "resnet32", None, (semi,)),
    )
    columns = tuple(f"Semi {100 * f:g}% CIFAR-10" for f in fractions)
    return TableSpec("labels", "Accuracy versus available labels (CIFAR-10)", columns, experiments)


def backbones_table(k: int = K_DEFAULT) -> TableSpec:
    """Conv4 versus ResNet-32 for every self-supervised method, linear evaluation on CIFAR-10 and CIFAR-100."""
    experiments = tuple(
        Experiment(method_label(method), backbone, Pretraining(method, dataset, backbone, k=k), (linear(dataset),))
        for method in SELF_SUPERVISED
        for backbone in COMPARED_BACKBONES
        for dataset in ("cifar10", "cifar100")
    )
    return TableSpec("backbones", "Conv4 versus ResNet-32", ("Linear CIFAR-10", "Linear CIFAR-100"), experiments)


# ---------------------------------------------------------------------------------------------- scales
