"""The seed's experiments as data, planned into runs at a scale, run (or printed for a cluster), and reported.

Three layers, each plain data:

1. **Descriptions** (scale-free): a `TableSpec` is a named table of the paper (`table1`: methods x protocols,
   `table2`: the head ablation, `k`: accuracy versus K, `labels`: accuracy versus labelled fraction,
   `backbones`: conv4 versus resnet32). Its `Experiment`s are one pretraining (`Pretraining`, or None for
   random weights) and the `Evaluation`s made of it, on dataset *slots* (cifar10, cifar100, tiny-imagenet,
   stl10). `paper` is every table.
2. **Plan** (`plan(name, scale, ...)`): a `Scale` maps the descriptions to concrete work: the datasets and
   backbones really used, epochs, steps, seeds. Experiments that need the same pretraining (the relational
   ResNet-32 on CIFAR-100 serves table 1, table 2 and the backbone comparison) share one `Run`, named
   deterministically from its settings (`relational-resnet32-cifar100-k32-s1`); each run is a
   `RunConfig` (None for random weights) and the `EvalJob`s on it, each with its result file.
3. **Execution and report**: `execute` pretrains and evaluates what is not complete, in sequence, through
   the library (or `accelerate launch` for pretraining); `commands` prints the same work as command lines;
   `write_report` gathers the results into ``<runs>/report-<NAME>/``: the tables as markdown (the cells
   built with `ssrr.eval.report`) and the figures (accuracy versus K, versus labels, conv4 versus resnet32).

Completion (what `execute` skips): a pretraining is done when its ``throughput.json`` says its configured
epochs (or its `max_steps`) were reached and ``backbone.safetensors`` is there; an evaluation is done when
its result JSON exists, was made with the planned epochs, and is newer than the backbone it evaluated.
A run folder made with other settings (another scale, edited definitions) is a *conflict*: never
overwritten, reported as an error naming the differing settings.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ssrr.data import formats
from ssrr.data.remote import is_url
from ssrr.errors import SsrrError
from ssrr.eval.report import STANDARD_COLUMNS, Cell, Table, columns_of, friendly, method_label, to_markdown
from ssrr.files import replacing, write_text_atomic
from ssrr.methods.base import with_method_defaults
from ssrr.train.config import CONFIG_FILE, RunConfig

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
# The paper pretrains on STL-10's train and 100k unlabeled images; supervised training has labels for train only.
STL10_SPLIT: dict[str, str] = {method: "train+unlabeled" for method in SELF_SUPERVISED} | {"supervised": "train"}
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
COMPARED_SETTINGS += ("head", "labels", "seed", "max_steps", "split")

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
    head: str = "relation"
    epochs: int = EPOCHS
    split: str = "train"  # STL-10's self-supervised runs: train+unlabeled, as the paper


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
    for method in METHODS:
        label = method_label(method)
        experiments += [
            Experiment(label, "resnet32", Pretraining(method, "cifar10", k=k), (linear("cifar10"), linear("cifar100"))),
            Experiment(
                label,
                "resnet32",
                Pretraining(method, "cifar100", k=k),
                (linear("cifar100"), linear("cifar10"), linear("cifar100", "coarse")),
            ),
            Experiment(label, "resnet32", Pretraining(method, "tiny-imagenet", k=k), (linear("tiny-imagenet"),)),
            Experiment(
                label,
                "resnet34",
                Pretraining(method, "stl10", "resnet34", k=k, epochs=EPOCHS_STL10, split=STL10_SPLIT[method]),
                (Evaluation("finetune", "stl10"),),
                row_backbone="resnet32",
            ),
        ]
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


@dataclass(frozen=True)
class Scale:
    """How big the planned work is. `full` is the paper; the others shrink it.

    `dataset`, when set, replaces every dataset slot (the tiny scale reads the embedded synthetic data for
    all of them, so table columns then show the same data under the paper's names); `backbones` maps the
    paper's backbones to cheaper ones; `grain` False drops the coarse-label evaluations (data without
    coarse labels); `pretrain_epochs` None keeps each experiment's own (200, or 300 for STL-10).
    """

    name: str
    summary: str
    seeds: tuple[int, ...] = SEEDS
    k: int = K_DEFAULT
    k_values: tuple[int, ...] = K_VALUES
    fractions: tuple[float, ...] = FRACTIONS
    pretrain_epochs: int | None = None
    max_steps: int = 0
    batch: int = 64
    linear_epochs: int = 100
    finetune_epochs: int = 100
    semi_epochs: int = 100
    dataset: str | None = None
    backbones: tuple[tuple[str, str], ...] = ()
    grain: bool = True
    runs: str = "runs"  # the default --runs folder

    def backbone(self, name: str) -> str:
        return dict(self.backbones).get(name, name)

    def data(self, slot: str) -> str:
        return self.dataset or slot


SCALES: dict[str, Scale] = {
    "full": Scale("full", "the paper: 200 epochs (300 STL-10), K=32, M=64, linear 100 epochs, seeds 1-3"),
    "small": Scale(
        "small",
        "the paper's runs on the real datasets, cut short: 2 epochs (at most 200 steps), linear 10 epochs",
        pretrain_epochs=2,
        max_steps=200,
        linear_epochs=10,
        finetune_epochs=2,
        semi_epochs=10,
        runs="runs-small",
    ),
    "tiny": Scale(
        "tiny",
        "every dataset slot read from the embedded `synthetic` shards, resnet32/34 -> resnet8, conv4 kept, "
        "1 epoch (at most 10 steps), M=32, K=4 (sweep 2,4,8), linear 5 epochs, seeds 1-2, no grain",
        seeds=(1, 2),
        k=4,
        k_values=(2, 4, 8),
        pretrain_epochs=1,
        max_steps=10,
        batch=32,
        linear_epochs=5,
        finetune_epochs=1,
        semi_epochs=5,
        dataset="synthetic",
        backbones=(("resnet32", "resnet8"), ("resnet34", "resnet8")),
        grain=False,
        runs="runs-tiny",
    ),
}


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise SsrrError(f"--scale must be one of {', '.join(SCALES)}, got {name!r}")
    return SCALES[name]


def tables(name: str, scale: Scale) -> list[TableSpec]:
    """The named table(s) at a scale's K values: `paper` is all five."""
    builders: dict[str, Callable[[], TableSpec]] = {
        "table1": lambda: table1(scale.k),
        "table2": lambda: table2(scale.k),
        "k": lambda: k_table(scale.k_values),
        "labels": lambda: labels_table(scale.k, scale.fractions),
        "backbones": lambda: backbones_table(scale.k),
    }
    if name == "paper":
        return [builders[n]() for n in TABLE_NAMES]
    if name not in builders:
        raise SsrrError(f"unknown experiment {name!r} (choose from: {', '.join(NAMES)})")
    return [builders[name]()]


# ------------------------------------------------------------------------------------------- 2. plan


def result_stem(protocol: str, dataset: str, labels: str, seed: int) -> str:
    """`<protocol>-<dataset>[-coarse]-s<seed>`, as `ssrr.eval.common.result_stem` names result files."""
    return f"{protocol}-{dataset}{'-coarse' if labels == 'coarse' else ''}-s{seed}"


@dataclass
class EvalJob:
    """One evaluation of one run: its concrete dataset, epochs, seed and result file."""

    protocol: str
    dataset: str  # a name under the shards root (or a folder)
    labels: str
    epochs: int
    seed: int
    fractions: tuple[float, ...]
    out_dir: Path
    stem: str

    @property
    def result(self) -> Path:
        return self.out_dir / f"{self.stem}.json"

    @property
    def tag(self) -> str:
        return Evaluation(self.protocol, Path(self.dataset).name, self.labels, self.fractions).tag


@dataclass
class Run:
    """One pretraining run (or a random backbone, `config` None) and its evaluations."""

    name: str
    method: str
    backbone: str
    seed: int
    config: RunConfig | None
    folder: Path  # the run folder (for random weights the folder holding eval/)
    evaluations: list[EvalJob] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """What `load_backbone` and `ssrr eval` take: the run folder, or `random:<backbone>`."""
        return str(self.folder) if self.config else f"random:{self.backbone}"

    def datasets(self) -> list[str]:
        names = [self.config.dataset] if self.config else []
        return list(dict.fromkeys(names + [job.dataset for job in self.evaluations]))


@dataclass
class Entry:
    """A cell source of a table: one evaluation, of one experiment, at one seed, and where its result is."""

    table: str
    experiment: Experiment
    evaluation: Evaluation
    seed: int
    run: str
    result: Path
    row: tuple[str, str]  # (row label, backbone column)


@dataclass
class Plan:
    """The concrete work of a named experiment at a scale."""

    name: str
    scale: Scale
    runs_dir: Path
    shards_root: str
    tables: list[TableSpec]
    runs: list[Run]
    entries: list[Entry]

    @property
    def report_dir(self) -> Path:
        return self.runs_dir / f"{REPORT_PREFIX}{self.name}"

    def selected(self, only: Sequence[str] = ()) -> list[Run]:
        """The runs whose name contains any of `only` (every run when empty)."""
        patterns = [p for text in only for p in text.split(",") if p.strip()]
        if not patterns:
            return list(self.runs)
        return [run for run in self.runs if any(p.strip() in run.name for p in patterns)]


def run_name(method: str, backbone: str, dataset: str, k: int, head: str, seed: int) -> str:
    """`relational-resnet32-cifar100-k32-s1`, `relational-resnet32-cifar10-k32-dot-s2`, `simclr-conv4-cifar10-s3`."""
    parts = [method, backbone, Path(dataset).name]
    if method == "relational":
        parts.append(f"k{k}")
        if head != "relation":
            parts.append(head)
    return "-".join([*parts, f"s{seed}"])


def manifest_name(dataset: str, shards_root: str) -> str:
    """The dataset's manifest name (result files are named after it): read when its shards are local."""
    if not is_url(shards_root):
        try:
            return formats.load_manifest(formats.resolve_dataset(dataset, shards_root)).name
        except SsrrError:
            pass
    return Path(dataset).name


def plan(
    name: str,
    scale: Scale | str = "full",
    *,
    runs_dir: str | Path | None = None,
    shards_root: str = "shards",
    precision: str = "fp32",
    device: str = "auto",
) -> Plan:
    """The runs of named table(s) at a scale, shared runs merged, ordered seed by seed."""
    scale = get_scale(scale) if isinstance(scale, str) else scale
    runs_dir = Path(runs_dir if runs_dir is not None else scale.runs)
    specs = tables(name, scale)
    runs: dict[str, Run] = {}
    jobs: dict[tuple[str, str], EvalJob] = {}
    entries: list[Entry] = []
    names_cache: dict[str, str] = {}

    def stem_name(dataset: str) -> str:
        if dataset not in names_cache:
            names_cache[dataset] = manifest_name(dataset, shards_root)
        return names_cache[dataset]

    for seed in scale.seeds:
        for spec in specs:
            for experiment in spec.experiments:
                run = _run_for(experiment, seed, scale, runs_dir, shards_root, precision, device)
                known = runs.setdefault(run.name, run)
                if known.config != run.config:
                    raise SsrrError(f"{run.name}: two experiments define this run differently (a definition bug)")
                if spec.name not in known.tables:
                    known.tables.append(spec.name)
                row = (experiment.row, scale.backbone(experiment.row_backbone or experiment.backbone))
                for evaluation in experiment.evaluations:
                    if evaluation.labels == "coarse" and not scale.grain:
                        continue
                    job = _job_for(evaluation, known, scale, stem_name)
                    key = (known.name, job.stem)
                    if key not in jobs:
                        jobs[key] = job
                        known.evaluations.append(job)
                    elif jobs[key].fractions != job.fractions or jobs[key].epochs != job.epochs:
                        raise SsrrError(f"{known.name}: two evaluations write {job.stem} (a definition bug)")
                    entries.append(Entry(spec.name, experiment, evaluation, seed, known.name, job.result, row))
    return Plan(name, scale, runs_dir, shards_root, specs, list(runs.values()), entries)


def _run_for(
    experiment: Experiment, seed: int, scale: Scale, runs_dir: Path, shards_root: str, precision: str, device: str
) -> Run:
    backbone = scale.backbone(experiment.backbone)
    pre = experiment.pretraining
    if pre is None:
        return Run(f"{RANDOM}-{backbone}-s{seed}", RANDOM, backbone, seed, None, runs_dir / f"{RANDOM}-{backbone}")
    dataset = scale.data(pre.dataset)
    name = run_name(pre.method, backbone, dataset, pre.k, pre.head, seed)
    config = RunConfig(
        method=pre.method,
        dataset=dataset,
        backbone=backbone,
        k=pre.k,
        batch=scale.batch,
        epochs=scale.pretrain_epochs or pre.epochs,
        head=pre.head,
        split=pre.split if scale.dataset is None else "train",  # a stand-in dataset has a train split only
        precision=precision,
        seed=seed,
        out=str(runs_dir),
        name=name,
        shards_root=shards_root,
        max_steps=scale.max_steps,
        device=device,
    )
    return Run(name, pre.method, backbone, seed, config, runs_dir / name)


def _job_for(evaluation: Evaluation, run: Run, scale: Scale, stem_name: Callable[[str], str]) -> EvalJob:
    dataset = scale.data(evaluation.dataset)
    epochs = {"linear": scale.linear_epochs, "finetune": scale.finetune_epochs, "semi": scale.semi_epochs}
    if evaluation.protocol not in epochs:
        raise SsrrError(f"unknown evaluation protocol {evaluation.protocol!r}")
    stem = result_stem(evaluation.protocol, stem_name(dataset), evaluation.labels, run.seed)
    return EvalJob(
        evaluation.protocol,
        dataset,
        evaluation.labels,
        epochs[evaluation.protocol],
        run.seed,
        evaluation.fractions,
        run.folder / EVAL_DIR,
        stem,
    )


# ---------------------------------------------------------------------------------------------- status


@dataclass
class Status:
    """Where a run stands: its pretraining, each evaluation, and a summary word."""

    pretrain: str  # done | partial | todo | conflict | none (random weights)
    evaluations: list[str]  # done | todo | conflict, one per EvalJob
    conflict: str = ""  # what differs, when a conflict

    @property
    def word(self) -> str:
        states = [self.pretrain, *self.evaluations]
        if "conflict" in states:
            return "conflict"
        if all(s in ("done", "none") for s in states):
            return "done"
        if all(s in ("todo", "none") for s in states):
            return "todo"
        return "partial"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _count(record: dict[str, Any], key: str) -> int:
    """A whole number from a record read back from a run folder; anything else (a damaged or planted file)
    counts as 0, so the run is resumed rather than taken as done."""
    value = record.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def pretrain_status(run: Run) -> tuple[str, str]:
    """(state, what differs) of a run's pretraining, from its folder."""
    if run.config is None:
        return "none", ""
    config = with_method_defaults(run.config)  # as the run saves it
    if not (run.folder / CONFIG_FILE).is_file():
        return "todo", ""
    try:
        saved = with_method_defaults(RunConfig.load(run.folder))
    except SsrrError as exc:
        return "conflict", str(exc)
    differs = [
        f"{key}: {getattr(saved, key)} != {getattr(config, key)}"
        for key in COMPARED_SETTINGS
        if getattr(saved, key) != getattr(config, key)
    ]
    if Path(saved.dataset).name != Path(config.dataset).name:
        differs.append(f"dataset: {saved.dataset} != {config.dataset}")
    if differs:
        return "conflict", "; ".join(differs)
    throughput = _read_json(run.folder / THROUGHPUT_FILE)
    if throughput is not None and (run.folder / BACKBONE_FILE).is_file():
        epochs, steps = _count(throughput, "epochs"), _count(throughput, "steps")
        if epochs >= config.epochs or (config.max_steps and steps >= config.max_steps):
            return "done", ""
    return "partial", ""


def eval_status(run: Run, job: EvalJob, pretrained: str) -> tuple[str, str]:
    """(state, what differs) of one evaluation: done only on a finished backbone, with the planned epochs."""
    if pretrained not in ("done", "none"):
        return "todo", ""
    result = _read_json(job.result)
    if result is None:
        return "todo", ""
    if result.get("epochs") != job.epochs:
        return "conflict", f"{job.result.name}: epochs {result.get('epochs')} != {job.epochs}"
    if job.protocol == "semi":
        fractions = result.get("fractions")
        have = set(fractions) if isinstance(fractions, dict) else set()
        if not {f"{f:g}" for f in job.fractions} <= have:
            return "todo", ""
    weights = run.folder / BACKBONE_FILE
    if run.config is not None and weights.is_file() and job.result.stat().st_mtime < weights.stat().st_mtime:
        return "todo", ""  # made before the backbone last changed (a resumed run): stale
    return "done", ""


def status(run: Run) -> Status:
    pretrained, differs = pretrain_status(run)
    states, notes = [], [differs] if differs else []
    for job in run.evaluations:
        state, note = eval_status(run, job, pretrained)
        states.append(state)
        if note:
            notes.append(note)
    return Status(pretrained, states, "; ".join(notes))


def dataset_available(dataset: str, shards_root: str) -> bool:
    """Whether a dataset's shards can be found (a remote shards root is assumed to hold them)."""
    if is_url(dataset) or is_url(shards_root):
        return True
    try:
        formats.resolve_dataset(dataset, shards_root)
    except SsrrError:
        return False
    return True


def missing_datasets(runs: Iterable[Run], shards_root: str) -> list[str]:
    names = dict.fromkeys(d for run in runs for d in run.datasets())
    return [d for d in names if not dataset_available(d, shards_root)]


def shard_hint(datasets: Sequence[str], shards_root: str) -> str:
    """`ssrr shard cifar100` (and ...), with `--out ROOT` when the root is not the default."""
    out = "" if shards_root == "shards" else f" --out {shlex.quote(shards_root)}"
    return ", ".join(f"`ssrr shard {Path(d).name}{out}`" for d in datasets)


def describe(run: Run, state: Status, missing: Sequence[str] = ()) -> str:
    """One line per run: method, backbone, dataset, K and head, seed, evaluations, status (and run name)."""
    config = run.config
    dataset = Path(config.dataset).name if config else "-"
    extra = f"k={config.k} head={config.head}" if config and config.method == "relational" else ""
    evals = ", ".join(job.tag for job in run.evaluations)
    word = state.word
    lacking = [d for d in run.datasets() if d in missing]
    if lacking:
        word += "; missing shards: " + ", ".join(Path(d).name for d in lacking)
    if state.conflict:
        word += f"; {state.conflict}"
    head = f"{run.method:<11} {run.backbone:<8} {dataset:<13} {extra:<21} seed={run.seed}"
    return f"{head}  -> {evals}  [{word}]  {run.name}"


# ------------------------------------------------------------------------------------------- 3. execute


def pretrain_args(config: RunConfig, *, resume: bool = True) -> list[str]:
    """The `ssrr pretrain` options that make exactly this config."""
    args = ["--method", config.method, "--dataset", config.dataset, "--backbone", config.backbone]
    if config.method == "relational":
        args += ["--k", str(config.k), "--head", config.head]
    args += ["--batch", str(config.batch), "--epochs", str(config.epochs), "--seed", str(config.seed)]
    if config.split != "train":
        args += ["--split", config.split]
    if config.max_steps:
        args += ["--max-steps", str(config.max_steps)]
    if config.precision != "fp32":
        args += ["--precision", config.precision]
    if config.device != "auto":
        args += ["--device", config.device]
    args += ["--out", config.out, "--name", config.name, "--shards-root", config.shards_root]
    return [*args, "--resume"] if resume else args


def eval_args(run: Run, job: EvalJob, shards_root: str, device: str = "auto") -> list[str]:
    """The `ssrr eval PROTOCOL ...` arguments of one evaluation job."""
    args = [job.protocol, run.source, "--dataset", job.dataset]
    if job.labels != "fine":
        args += ["--labels", job.labels]
    if job.protocol == "semi":
        args += ["--fractions", ",".join(f"{f:g}" for f in job.fractions), "--mode", "linear"]
    args += ["--epochs", str(job.epochs), "--seed", str(job.seed), "--shards-root", shards_root]
    if device != "auto":
        args += ["--device", device]
    if run.config is None:
        args += ["--out", str(job.out_dir)]
    return args


DEFAULT_LAUNCH = "accelerate launch"


def commands(plan: Plan, runs: Sequence[Run], launch: str | None = None, device: str = "auto") -> list[str]:
    """Shell lines for the work left: `<launch> -m ssrr pretrain ... --resume`, then `ssrr eval ...`.

    Complete runs and evaluations are left out (a `# NAME: done` comment stands for a complete run).
    """
    prefix = shlex.split(launch or DEFAULT_LAUNCH)
    lines = []
    for run in runs:
        state = status(run)
        if state.word == "done":
            lines.append(f"# {run.name}: done")
            continue
        lines.append(f"# {run.name}: {state.word}")
        if run.config is not None and state.pretrain != "done":
            lines.append(shlex.join([*prefix, "-m", "ssrr", "pretrain", *pretrain_args(run.config)]))
        for job, job_state in zip(run.evaluations, state.evaluations, strict=True):
            if job_state != "done":
                lines.append(shlex.join(["ssrr", "eval", *eval_args(run, job, plan.shards_root, device)]))
    return lines


def execute(
    plan: Plan,
    runs: Sequence[Run],
    *,
    launch: str | None = None,
    show: bool = True,
    device: str = "auto",
    cache: str | Path | None = None,
    log: Log = print,
) -> dict[str, int]:
    """Pretrain and evaluate, in order, whatever of `runs` is not complete; return counts of what was done.

    Pretraining goes through `ssrr.train.loop.pretrain` (always with resume: a started run continues from
    its last checkpoint, a new one starts), or through `<launch> -m ssrr pretrain ...` when `launch` is
    given (e.g. ``accelerate launch --multi_gpu --num_processes 8``). Evaluations run in this process.
    """
    states = {run.name: status(run) for run in runs}
    conflicts = [f"{name} ({s.conflict})" for name, s in states.items() if s.word == "conflict"]
    if conflicts:
        raise SsrrError(
            f"{plan.runs_dir}: {len(conflicts)} run(s) made with other settings, e.g. {conflicts[0]}; "
            "use another --runs folder (or remove them)"
        )
    todo = [run for run in runs if states[run.name].word != "done"]
    missing = missing_datasets(todo, plan.shards_root)
    if missing:
        raise SsrrError(
            f"missing shards for {', '.join(Path(d).name for d in missing)} under {plan.shards_root}/: "
            f"make them with {shard_hint(missing, plan.shards_root)}"
        )
    counts = {"pretrained": 0, "evaluated": 0, "skipped": 0}
    for number, run in enumerate(runs, 1):
        state = states[run.name]
        where = f"[{number}/{len(runs)}] {run.name}"
        if state.word == "done":
            log(f"{where}: done")
            counts["skipped"] += 1
            continue
        if run.config is not None and state.pretrain != "done":
            log(f"{where}: pretrain ({'resume' if state.pretrain == 'partial' else 'start'})")
            _pretrain(run, plan, launch, show, cache)
            counts["pretrained"] += 1
            state = status(run)
            if state.pretrain != "done":
                raise SsrrError(f"{run.folder}: pretraining ended before its configured epochs")
        for job, job_state in zip(run.evaluations, state.evaluations, strict=True):
            if job_state == "done":
                log(f"{where}: {job.tag} done")
                continue
            log(f"{where}: {job.tag}")
            _evaluate(run, job, plan.shards_root, device, cache, show)
            counts["evaluated"] += 1
    return counts


def _local_dataset(dataset: str, shards_root: str, cache: str | Path | None, show: bool) -> Path:
    from ssrr.data.remote import resolve_dataset_any

    return resolve_dataset_any(dataset, shards_root, cache, show=show)


def _pretrain(run: Run, plan: Plan, launch: str | None, show: bool, cache: str | Path | None) -> None:
    assert run.config is not None
    config = run.config
    if is_url(config.shards_root) or is_url(config.dataset):  # fetched once, then read from the local cache
        local = _local_dataset(config.dataset, config.shards_root, cache, show)
        config = replace(config, dataset=str(local), shards_root=str(local.parent))
    if launch:
        command = [*shlex.split(launch), "-m", "ssrr", "pretrain", *pretrain_args(config)]
        if not show:
            command.append("--quiet")
        code = subprocess.run(command, check=False).returncode
        if code != 0:
            raise SsrrError(f"{run.name}: `{shlex.join(command)}` failed (exit code {code})")
        return
    from ssrr.eval.probes import probes_for
    from ssrr.train.loop import pretrain

    pretrain(config, resume=True, show=show, probes=probes_for(config))


def _evaluate(run: Run, job: EvalJob, shards_root: str, device: str, cache: str | Path | None, show: bool) -> None:
    from ssrr.eval.common import seed_everything
    from ssrr.train.checkpoint import load_backbone

    shard_dir = _local_dataset(job.dataset, shards_root, cache, show)
    seed_everything(job.seed)  # before loading: random weights are drawn from the seed
    loaded = load_backbone(run.source)
    common: dict[str, Any] = {"labels": job.labels, "epochs": job.epochs, "seed": job.seed, "device": device}
    if job.protocol == "linear":
        from ssrr.eval.linear import linear_eval

        linear_eval(loaded, shard_dir, out=job.out_dir, **common)
    elif job.protocol == "finetune":
        from ssrr.eval.finetune import finetune

        finetune(loaded, shard_dir, out=job.out_dir, **common)
    else:
        from ssrr.eval.semi import semi_eval

        semi_eval(loaded, shard_dir, fractions=job.fractions, mode="linear", out=job.out_dir, **common)


# -------------------------------------------------------------------------------------------- report


def _result(entry: Entry) -> dict[str, Any] | None:
    result = _read_json(entry.result)
    return result if result is not None and "protocol" in result else None


def build_tables(plan: Plan) -> dict[str, Table]:
    """Each named table as an `ssrr.eval.report.Table`: rows from the description, cells from the results.

    Results are placed by their dataset *slot* (so at the tiny scale, where every slot reads the synthetic
    data, the paper's columns still fill), mean and population std over seeds as in `ssrr report`.
    """
    built: dict[str, Table] = {}
    for spec in plan.tables:
        rows: list[tuple[str, str]] = []
        cells: dict[tuple[str, str], dict[str, Cell]] = {}
        seen: set[tuple[tuple[str, str], str, Path]] = set()
        sources: set[Path] = set()
        for entry in (e for e in plan.entries if e.table == spec.name):
            if entry.row not in cells:
                rows.append(entry.row)
                cells[entry.row] = {}
            result = _result(entry)
            if result is None:
                continue
            placed = {**result, "dataset": entry.evaluation.dataset, "labels": entry.evaluation.labels}
            pretraining = entry.experiment.pretraining
            for column, value in columns_of(placed, pretraining.dataset if pretraining else None):
                if (entry.row, column, entry.result) in seen:
                    continue
                seen.add((entry.row, column, entry.result))
                sources.add(entry.result)
                cells[entry.row].setdefault(column, Cell()).values.append(float(value))
        extra = sorted({c for row in cells.values() for c in row} - set(spec.columns))
        built[spec.name] = Table([*spec.columns, *extra], rows, cells, len(sources))
    return built


def _series(plan: Plan, table: str, key: Callable[[Entry, dict[str, Any]], Iterable[tuple[Any, Any, float]]]):  # type: ignore[no-untyped-def]
    """{series: {x: Cell}} over a table's results; `key` turns (entry, result) into (series, x, value)s."""
    out: dict[Any, dict[Any, Cell]] = {}
    for entry in (e for e in plan.entries if e.table == table):
        result = _result(entry)
        if result is None:
            continue
        for series, x, value in key(entry, result):
            out.setdefault(series, {}).setdefault(x, Cell()).values.append(float(value))
    return out


def _data_note(plan: Plan) -> str:
    return f" ({plan.scale.dataset} data)" if plan.scale.dataset else ""


def _scale_note(plan: Plan) -> str:
    return "" if plan.scale.name == "full" else f"  [scale {plan.scale.name}]"


def figure_k(plan: Plan, path: Path) -> Path | None:
    """Linear top-1 versus K (log2 axis), one line per (method, backbone, dataset), mean ± std over seeds."""

    def key(entry: Entry, result: dict[str, Any]) -> Iterable[tuple[Any, Any, float]]:
        pre = entry.experiment.pretraining
        if pre is None or not isinstance(result.get("top1"), (int, float)):
            return []
        return [((entry.row[1], entry.evaluation.dataset), pre.k, result["top1"])]

    data = _series(plan, "k", key)
    if not data:
        return None
    fig = _figure("k")
    ax = fig.add_subplot()
    ticks: set[int] = set()
    for (backbone, dataset), points in sorted(data.items()):
        xs = sorted(points)
        ticks.update(xs)
        ys = [points[x].mean for x in xs]
        label = f"{backbone}, {friendly(dataset)}{_data_note(plan)}"
        ax.errorbar(xs, ys, yerr=[points[x].std for x in xs], marker="o", capsize=4, label=label)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
    ax.set_xlabel("K (augmentations per image)")
    ax.set_ylabel("linear evaluation top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Relational reasoning: accuracy versus K (mean ± std over seeds){_scale_note(plan)}", fontsize=10)
    return _save(fig, path)


def figure_labels(plan: Plan, path: Path) -> Path | None:
    """Top-1 versus the labelled fraction (log axis), one line per method, mean ± std over seeds."""

    def key(entry: Entry, result: dict[str, Any]) -> Iterable[tuple[Any, Any, float]]:
        fractions = result.get("fractions")
        if not isinstance(fractions, dict):
            return []
        return [(entry.row[0], float(f), v) for f, v in fractions.items() if isinstance(v, (int, float))]

    data = _series(plan, "labels", key)
    if not data:
        return None
    fig = _figure("labels")
    ax = fig.add_subplot()
    ticks: set[float] = set()
    for label, points in data.items():
        xs = sorted(points)
        ticks.update(xs)
        percent = [100 * x for x in xs]
        ax.errorbar(
            percent, [points[x].mean for x in xs], yerr=[points[x].std for x in xs], marker="o", capsize=4, label=label
        )
    ax.set_xscale("log")
    ax.set_xticks([100 * t for t in sorted(ticks)], [f"{100 * t:g}%" for t in sorted(ticks)])
    ax.set_xlabel("labelled training samples")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Accuracy versus available labels (mean ± std over seeds){_scale_note(plan)}", fontsize=10)
    return _save(fig, path)


def figure_backbones(plan: Plan, path: Path) -> Path | None:
    """Grouped bars: per method, one bar per backbone; one panel per dataset; mean ± std over seeds."""

    def key(entry: Entry, result: dict[str, Any]) -> Iterable[tuple[Any, Any, float]]:
        if not isinstance(result.get("top1"), (int, float)):
            return []
        return [(entry.evaluation.dataset, (entry.row[0], entry.row[1]), result["top1"])]

    data = _series(plan, "backbones", key)
    if not data:
        return None
    import numpy as np

    fig = _figure("backbones")
    datasets = [d for d in ("cifar10", "cifar100") if d in data] + sorted(set(data) - {"cifar10", "cifar100"})
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        points = data[dataset]
        methods = list(dict.fromkeys(method for method, _ in points))
        backbones = list(dict.fromkeys(backbone for _, backbone in points))
        width = 0.8 / max(len(backbones), 1)
        positions = np.arange(len(methods))
        for i, backbone in enumerate(backbones):
            cells = [points.get((method, backbone)) for method in methods]
            ax.bar(
                positions + (i - (len(backbones) - 1) / 2) * width,
                [c.mean if c else 0.0 for c in cells],
                width,
                yerr=[c.std if c else 0.0 for c in cells],
                capsize=3,
                label=backbone,
            )
        ax.set_xticks(positions, methods, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("linear evaluation top-1 (%)")
        ax.set_title(friendly(dataset) + _data_note(plan), fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{' versus '.join(_backbone_names(data))} (mean ± std over seeds){_scale_note(plan)}", fontsize=10)
    return _save(fig, path)


def _backbone_names(data: dict[Any, dict[Any, Cell]]) -> list[str]:
    return list(dict.fromkeys(backbone for points in data.values() for _, backbone in points))


def _figure(kind: str):  # type: ignore[no-untyped-def]
    """A matplotlib figure (Agg canvas, no display, no torch import) of a fixed pixel size."""
    from matplotlib.figure import Figure

    width, height = FIGURE_SIZE_IN[kind]
    return Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    """Save at FIGURE_DPI without a tight bounding box: the PNG is exactly figsize x dpi pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=FIGURE_DPI, format="png")
    return path


FIGURES: dict[str, Callable[[Plan, Path], Path | None]] = {
    "k": figure_k,
    "labels": figure_labels,
    "backbones": figure_backbones,
}


def write_report(plan: Plan) -> Path:
    """``<runs>/report-<NAME>/``: report.md (every table and figure), <table>.md, report.json, the PNGs."""
    folder = plan.report_dir
    folder.mkdir(parents=True, exist_ok=True)
    built = build_tables(plan)
    words = [status(run).word for run in plan.runs]
    counts = {word: words.count(word) for word in ("done", "partial", "todo", "conflict") if word in words}
    progress = ", ".join(f"{n} {word}" for word, n in counts.items())
    lines = [
        f"# Reproduction: {plan.name} (scale {plan.scale.name})",
        "",
        f"Scale: {plan.scale.summary}.",
        f"Runs: {len(plan.runs)} ({progress}); folder `{plan.runs_dir}`; shards `{plan.shards_root}`.",
        "Cells: top-1 %, mean±std (population) over seeds; '-': no result yet.",
        "",
    ]
    figures: dict[str, str] = {}
    for spec in plan.tables:
        table = built[spec.name]
        markdown = to_markdown(table)
        write_text_atomic(folder / f"{spec.name}.md", f"# {spec.title}\n\n{markdown}")
        lines += [f"## {spec.title}", "", markdown.rstrip("\n")]
        if spec.note and not plan.scale.backbones:  # notes speak of the paper's backbones
            lines += ["", spec.note]
        if spec.name in FIGURES:
            target = folder / FIGURE_FILES[spec.name]
            made = FIGURES[spec.name](plan, target)
            if made is not None:
                figures[spec.name] = made.name
                lines += ["", f"![{spec.title}]({made.name})"]
            else:
                target.unlink(missing_ok=True)
                lines += ["", "(figure: no results yet)"]
        lines.append("")
    write_text_atomic(folder / "report.md", "\n".join(lines))
    summary = {
        "name": plan.name,
        "scale": plan.scale.name,
        "runs": counts,
        "tables": {name: table.as_dict() for name, table in built.items()},
        "figures": figures,
    }
    write_text_atomic(folder / "report.json", json.dumps(summary, indent=2) + "\n")
    return folder
