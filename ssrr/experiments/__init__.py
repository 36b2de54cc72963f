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

Modules: `tables` (descriptions and constants), `scales`, `planning` (plan, runs, jobs, status), `execution`
(execute, commands), `report` (tables and figures).
"""

from ssrr.experiments.execution import commands, eval_args, execute, pretrain_args
from ssrr.experiments.planning import (
    EvalJob,
    Plan,
    Run,
    Status,
    describe,
    eval_status,
    missing_datasets,
    plan,
    pretrain_status,
    result_stem,
    shard_hint,
    status,
)
from ssrr.experiments.report import build_tables, write_report
from ssrr.experiments.scales import SCALES, Scale, get_scale, tables
from ssrr.experiments.tables import (
    FRACTIONS,
    HEADS,
    K_DEFAULT,
    K_VALUES,
    METHODS,
    NAMES,
    SEEDS,
    SELF_SUPERVISED,
    TABLE_NAMES,
    TableSpec,
)

__all__ = [
    "FRACTIONS",
    "HEADS",
    "K_DEFAULT",
    "K_VALUES",
    "METHODS",
    "NAMES",
    "SCALES",
    "SEEDS",
    "SELF_SUPERVISED",
    "TABLE_NAMES",
    "EvalJob",
    "Plan",
    "Run",
    "Scale",
    "Status",
    "TableSpec",
    "build_tables",
    "commands",
    "describe",
    "eval_args",
    "eval_status",
    "execute",
    "get_scale",
    "missing_datasets",
    "plan",
    "pretrain_args",
    "pretrain_status",
    "result_stem",
    "shard_hint",
    "status",
    "tables",
    "write_report",
]
