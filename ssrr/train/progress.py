"""The live training display (rich) and the end-of-run summary table. Main process only."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)

# Columns of the live line and the summary: (metric key, label, format).
COLUMNS = (
    ("loss", "loss", "{:.4f}"),
    ("acc_pos", "acc+", "{:.1%}"),
    ("acc_neg", "acc-", "{:.1%}"),
    ("views_per_s", "views/s", "{:,.0f}"),
    ("images_per_s", "images/s", "{:,.0f}"),
    ("pairs_per_s", "pairs/s", "{:,.0f}"),
    ("data_wait", "data wait", "{:.1%}"),
    ("memory_mb", "memory MB", "{:,.0f}"),
)


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(
        f"{label} {fmt.format(metrics[key])}"
        for key, label, fmt in COLUMNS
        if key in metrics and metrics[key] is not None
    )


class TrainDisplay:
    """A progress bar per epoch with the running metrics beside it; a line per epoch when not a terminal."""

    def __init__(self, enabled: bool, total_epochs: int) -> None:
        self.enabled = enabled
        self.total_epochs = total_epochs
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("epoch left"),
            TimeRemainingColumn(),
            TextColumn("run left {task.fields[run_left]}{task.fields[plan]}"),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            transient=False,
            disable=not enabled or not console.is_terminal,
        )
        self.task: TaskID | None = None
        self.run_left = "?"
        self.plan = ""  # a time budget's plan, e.g. " (budget 15 min: 22,000 steps (28.2 epochs))"

    def __enter__(self) -> TrainDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(kind, exc, tb)

    def start_epoch(self, epoch: int, steps: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(
            "train",
            total=steps,
            epoch=epoch + 1,
            epochs=self.total_epochs,
            metrics="",
            run_left=self.run_left,
            plan=self.plan,
        )

    def update(self, step_in_epoch: int, metrics: dict[str, float], run_left_s: float | None = None) -> None:
        """Progress of the epoch; `run_left_s`: the loop's projection of the seconds left in the whole run."""
        if run_left_s is not None:
            self.run_left = format_duration(run_left_s)
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=step_in_epoch,
                metrics=format_metrics(metrics),
                run_left=self.run_left,
                epochs=self.total_epochs,
                plan=self.plan,
            )

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.enabled and not console.is_terminal:
            left = f"run left ~{self.run_left}{self.plan}"
            line = f"epoch {epoch + 1}/{self.total_epochs}  {left}  {format_metrics(metrics)}"
            console.print(line, highlight=False)


def format_duration(seconds: float) -> str:
    """`42s`, `7m05s`, `3h12m`, `9d04h`: the time left, to the precision a plan needs."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def summary_table(title: str, metrics: dict[str, float], extra: dict[str, str]) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in extra.items():
        table.add_row(key, value)
    for key, label, fmt in COLUMNS:
        if metrics.get(key) is not None:
            table.add_row(label, fmt.format(metrics[key]))
    return table
