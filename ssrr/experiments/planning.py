"""Planning: descriptions at a scale become concrete runs and evaluation jobs; where each run stands."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ssrr.config import CONFIG_FILE, Device, RunConfig
from ssrr.data import formats
from ssrr.data.remote import is_url
from ssrr.errors import SsrrError
from ssrr.experiments.scales import Scale, get_scale, tables
from ssrr.experiments.tables import (
    BACKBONE_FILE,
    COMPARED_SETTINGS,
    EVAL_DIR,
    RANDOM,
    REPORT_PREFIX,
    THROUGHPUT_FILE,
    Evaluation,
    Experiment,
    Pretraining,
    TableSpec,
)
from ssrr.methods.base import method_class, with_method_defaults
from ssrr.options import backbone_tag
from ssrr.precision import Precision

# ------------------------------------------------------------------------------------------- 2. plan


def result_stem(protocol: str, dataset: str, labels: str, seed: int, source: str = "") -> str:
    """`<protocol>-<dataset>[-coarse][-<source>]-s<seed>`, as `ssrr.eval.common.result_stem` names result files
    (`source`: what was evaluated, the run folder's name: `<run name>` or `random-<backbone>`)."""
    return f"{protocol}-{dataset}{'-coarse' if labels == 'coarse' else ''}{f'-{source}' if source else ''}-s{seed}"


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


def run_name(method: str, backbone: str, dataset: str, k: int, head: str, seed: int, form: str = "authors") -> str:
    """`relational-resnet32-cifar100-k32-s1`, `relational-resnet32-cifar10-k32-dot-s2`, `simclr-conv4-cifar10-s3`
    (the authors' form), `simclr-conv4-cifar10-standard-s3` (the standard form, where it differs)."""
    parts = [method, backbone_tag(backbone), Path(dataset).name]
    if method == "relational":
        parts.append(f"k{k}")
        if head != "relation":
            parts.append(head)
    if form != "authors":
        parts.append(form)
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
        tag = backbone_tag(backbone)
        return Run(f"{RANDOM}-{tag}-s{seed}", RANDOM, backbone, seed, None, runs_dir / f"{RANDOM}-{tag}")
    dataset = scale.data(pre.dataset)
    name = run_name(pre.method, backbone, dataset, pre.k, pre.head, seed, pre.form)
    config = RunConfig(
        method=pre.method,
        dataset=dataset,
        backbone=backbone,
        k=pre.k,
        batch=scale.batch or method_class(pre.method).default_batch,  # the authors': 64 relational, 128 baselines
        epochs=scale.pretrain_epochs or pre.epochs,
        head=pre.head,
        split=pre.split if scale.dataset is None else "train",  # a stand-in dataset has a train split only
        method_options=_method_options(pre, scale),
        precision=cast(Precision, precision),  # checked with the whole config (RunConfig.validate)
        seed=seed,
        out=str(runs_dir),
        name=name,
        shards_root=shards_root,
        max_steps=scale.max_steps or None,
        device=cast(Device, device),
    )
    return Run(name, pre.method, backbone, seed, config, runs_dir / name)


def _method_options(pre: Pretraining, scale: Scale) -> dict[str, Any]:
    """The run's method options: its form's (the authors' by default, tables.AUTHORS_FORMS); supervised on STL-10
    augments as the authors' code (one stand-in run: not)."""
    options: dict[str, Any] = pre.method_options()
    if pre.method == "supervised":
        options["augment"] = pre.supervised_augment if scale.dataset is None else "crop-flip"
    return options


def _job_for(evaluation: Evaluation, run: Run, scale: Scale, stem_name: Callable[[str], str]) -> EvalJob:
    dataset = scale.data(evaluation.dataset)
    epochs = {"linear": scale.linear_epochs, "finetune": scale.finetune_epochs, "semi": scale.semi_epochs}
    if evaluation.protocol not in epochs:
        raise SsrrError(f"unknown evaluation protocol {evaluation.protocol!r}")
    stem = result_stem(evaluation.protocol, stem_name(dataset), evaluation.labels, run.seed, run.folder.name)
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
    if config and config.method_options:  # the form of a baseline (the authors', or the standard)
        extra = " ".join(f"{key}={value}" for key, value in sorted(config.method_options.items()))
    evals = ", ".join(job.tag for job in run.evaluations)
    word = state.word
    lacking = [d for d in run.datasets() if d in missing]
    if lacking:
        word += "; missing shards: " + ", ".join(Path(d).name for d in lacking)
    if state.conflict:
        word += f"; {state.conflict}"
    head = f"{run.method:<11} {run.backbone:<8} {dataset:<13} {extra:<21} seed={run.seed}"
    return f"{head}  -> {evals}  [{word}]  {run.name}"
