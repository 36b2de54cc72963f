"""`ssrr eval ...`: the paper's evaluation protocols on a pretrained (or random) backbone.

One command per protocol of the registry (`ssrr.eval.protocols`), built here from the options every protocol shares
(`_SHARED`, declared once) and the protocol's own (`Protocol.options`): a new protocol file gets its command without
an edit here. Every command takes a run folder, a checkpoint folder, a backbone `.safetensors` file, or
`random:<backbone>` (the lower bound), and a dataset (a name under --shards-root or a shard folder; by default the
one the run was pretrained on). Results go to `<run>/eval/` (for random backbones `runs/random-<backbone>/eval/`),
or `--out`. With `--json` one JSON object is printed on stdout; progress and tables go to stderr.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from ssrr.cli.common import console, new_app

if TYPE_CHECKING:
    from ssrr.eval.protocols import Protocol

eval_app = new_app(
    "Evaluate a backbone: linear, finetune, semi, retrieval, tsne, knn. Results go to RUN/eval/.\n\n"
    "Example: [bold]ssrr eval linear runs/relational-resnet32-cifar100-s1 --dataset cifar100[/]"
)

SPEC_HELP = "Run folder, checkpoint folder, backbone .safetensors file, or random:<backbone> (e.g. random:conv4)."
DATASET_HELP = "Dataset name under --shards-root, or a shard folder (default: the dataset the run was pretrained on)."
LABELS_HELP = "fine, or coarse (CIFAR-100's 20 superclasses: the 'grain' protocol)."
DEVICE_HELP = "auto (the GPU when usable, else the CPU, saying why), cpu, cuda, cuda:N."
OUT_HELP = "Output folder (default RUN/eval/, or runs/random-<backbone>/eval/ for random:<backbone>)."
IMAGE_SIZE_HELP = "auto (resize to the backbone's pretraining size when it differs), native, N or HxW."
BACKBONE_HELP = "Expected backbone (conv4, resnet32, ...): refuse a checkpoint of another one."
PRECISION_HELP = "Forward passes in fp32, bf16, fp16, or auto (bf16 where native, fp16 on older GPUs, else fp32)."
SPLIT_HELP = (
    "Split scored (default: the dataset's labelled held-out split, from its manifest: test for CIFAR and STL-10, "
    "val for tiny-ImageNet or an image folder without test)."
)
SEED_HELP = "Seed: head initialisation, shuffles, subsets (and the weights of random:<backbone>)."

Spec = typer.Argument(..., metavar="RUN_DIR_OR_CHECKPOINT", help=SPEC_HELP)


def _load(spec: str, dataset: str | None, shards_root: str, backbone: str | None, seed: int):  # type: ignore[no-untyped-def]
    """Seed, then load the backbone (random weights are drawn from the seed) and resolve the dataset."""
    from ssrr.data.remote import resolve_dataset_any
    from ssrr.errors import SsrrError
    from ssrr.eval.common import seed_everything
    from ssrr.train.checkpoint import load_backbone

    seed_everything(seed)
    loaded = load_backbone(spec, backbone or None)
    name = dataset or loaded.trained_on
    if not name:
        raise SsrrError(f"{spec}: pretraining dataset unknown; name the evaluation dataset with --dataset")
    return loaded, resolve_dataset_any(name, shards_root)


def _emit(result: dict[str, Any], as_json: bool, headline: list[str]) -> None:
    """One JSON object on stdout, or a short table on stderr."""
    from rich.table import Table

    from ssrr.eval.common import dump_json

    if as_json:
        typer.echo(dump_json(result))
        return
    table = Table(title=f"{result['protocol']}: {result['source']} on {result['dataset']} ({result['labels']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in headline:
        value = result.get(key)
        if isinstance(value, dict):
            for sub, v in value.items():
                table.add_row(f"{key} {sub}", f"{v:.2f}" if isinstance(v, float) else str(v))
        elif value is not None:
            table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    table.add_row("wall_s", f"{result.get('wall_s', 0):.1f}")
    console.print(table)
    for path in result.get("files", []):
        console.print(f"  wrote {path}")


class _EpochProgress:
    """A transient rich progress bar on stderr, fed (epoch, epochs, loss)."""

    def __init__(self, title: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn(title),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,  # a bar only where it can redraw: no stray blank line in logs
        )
        self.task: Any = None

    def __enter__(self) -> _EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, epoch: int, epochs: int, loss: float) -> None:
        if self.task is None:
            self.task = self.progress.add_task("", total=epochs, loss="-")
        self.progress.update(self.task, completed=epoch, loss=f"{loss:.4f}")


# The options every protocol shares, declared once: (keyword, type, default, flags, help).
_SHARED: tuple[tuple[str, Any, Any, tuple[str, ...], str], ...] = (
    ("dataset", str | None, None, ("--dataset", "-d"), DATASET_HELP),
    ("split", str | None, None, ("--split",), SPLIT_HELP),
    ("labels", str, "fine", ("--labels",), LABELS_HELP),
    ("seed", int, 1, ("--seed",), SEED_HELP),
    ("device", str, "auto", ("--device",), DEVICE_HELP),
    ("precision", str, "fp32", ("--precision",), PRECISION_HELP),
    ("out", str | None, None, ("--out",), OUT_HELP),
    ("image_size", str, "auto", ("--image-size",), IMAGE_SIZE_HELP),
    ("backbone", str | None, None, ("--backbone",), BACKBONE_HELP),
    ("shards_root", str, "shards", ("--shards-root",), "Where dataset names are looked up."),
    ("as_json", bool, False, ("--json",), "Print one JSON object (the result) on stdout."),
)


def _parameters(protocol: Protocol) -> list[inspect.Parameter]:
    """The command's parameters: the backbone spec, the shared options, then the protocol's own options (each
    older name a hidden parameter of its own)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("spec", keyword, default=Spec, annotation=str)]
    for name, kind, default, flags, text in _SHARED:
        if name == "split":
            flags, text = (*flags, *protocol.split_flags), f"{protocol.split_help} {text}".strip()
        option = typer.Option(default, *flags, help=text)
        params.append(inspect.Parameter(name, keyword, default=option, annotation=kind))
    for opt in protocol.options:
        option = typer.Option(opt.default, *opt.cli_flags, help=opt.help)
        kind = opt.type if opt.default is not None else opt.type | None  # None: the protocol's own default
        params.append(inspect.Parameter(opt.name, keyword, default=option, annotation=kind))
        for flag in opt.hidden:  # named after its flag, so a bad value's error names the flag typed
            alias = typer.Option(None, flag, hidden=True)
            params.append(inspect.Parameter(_alias_key(flag), keyword, default=alias, annotation=opt.type | None))
    return params


def _alias_key(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _aliases(protocol: Protocol) -> dict[str, str]:
    """Keyword of each older flag's parameter -> the option it stands for (its value wins when given)."""
    return {_alias_key(flag): opt.name for opt in protocol.options for flag in opt.hidden}


def _command(protocol: Protocol) -> Callable[..., None]:
    """`ssrr eval <protocol>`: load the backbone, run the protocol (with its progress display), print the result."""

    def command(**given: Any) -> None:
        for key, target in aliases.items():
            value = given.pop(key)
            if value is not None:
                given[target] = value
        spec, dataset, backbone, shards_root = (given.pop(k) for k in ("spec", "dataset", "backbone", "shards_root"))
        as_json = given.pop("as_json")
        loaded, shard_dir = _load(spec, dataset, shards_root, backbone, given["seed"])
        started = time.perf_counter()
        if protocol.progress == "epochs":
            with _EpochProgress(protocol.name) as progress:
                result = protocol.run(loaded, shard_dir, progress=progress, **given)
        elif protocol.progress == "lines":
            result = protocol.run(loaded, shard_dir, progress=lambda line: console.print(f"  {line}"), **given)
        elif protocol.progress == "status":
            with console.status(f"{protocol.name} ..."):
                result = protocol.run(loaded, shard_dir, **given)
        else:
            result = protocol.run(loaded, shard_dir, **given)
        result.setdefault("wall_s", round(time.perf_counter() - started, 3))
        _emit(result, as_json, list(protocol.headline))

    aliases = _aliases(protocol)
    params = _parameters(protocol)
    if len({p.name for p in params}) != len(params):
        raise ValueError(f"eval {protocol.name}: two options with one keyword ({[p.name for p in params]})")
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = protocol.name
    command.__doc__ = protocol.help
    return command


_COMMANDS: set[str] = set()  # the protocols that have their command on `eval_app`


def sync_protocols() -> list[str]:
    """Give every registered protocol that has none its `ssrr eval` command; the names added. Mounting calls it;
    a protocol registered outside `ssrr/eval/` (a plugin, a test) calls it after `register`."""
    from ssrr.eval.protocols import protocols

    added = [p for p in protocols() if p.name not in _COMMANDS]
    for protocol in added:
        eval_app.command(protocol.name, help=protocol.help)(_command(protocol))
        _COMMANDS.add(protocol.name)
    return [p.name for p in added]


def register(app: typer.Typer) -> None:
    sync_protocols()
    app.add_typer(eval_app, name="eval")
