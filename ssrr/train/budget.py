"""`--time-budget`: pretraining that ends within a given time on whatever machine runs it.

A fixed number of epochs takes 800 s on one CPU and 1,000 s on another. A budget instead measures the run's own
pace (pretraining seconds over steps, everything a step costs included, the first step of a call left out:
kernel selection, allocations) and plans how many steps fit in what is left: after steps 1, 2, 4, 8, ..., every
`REPLAN_EVERY` steps, at every epoch's end, and halfway from the last plan to the planned end (so ever more
often as the end nears; at the planned end it ends only when no further step fits), so a machine that slows
down mid-run still ends in time. The learning-rate schedule's length follows the plan (read at every step) once
`SETTLED_AFTER` steps have been measured; before that it runs as over the cap (the warm-up, or ~the peak). A
few percent of the budget, and the estimated time of the BatchNorm recalibration, are kept back for what comes
after the last step. Resuming keeps the saved plan: it is not measured again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

REPLAN_EVERY = 50  # steps between plans within an epoch
RESERVE_FRACTION = 0.03  # of the budget, kept for the end of the run
SETTLED_AFTER = 8  # steps measured (after the first) before the schedule follows the plan


@dataclass
class TimeBudget:
    """The plan of a run with a time budget: how many optimizer steps it takes in all."""

    seconds: float
    steps_per_epoch: int
    cap_steps: int  # the most the run may take: its --epochs (and --max-steps) when typed
    planned_steps: int  # the cap until the first plan
    end_reserve_s: float = 0.0  # estimated seconds after the last step (BatchNorm recalibration)
    fixed: bool = False  # resumed: the saved plan is kept
    first: tuple[float, int] | None = None  # (seconds, steps) at the first plan: the pace is measured from there
    last_steps: int = 0  # steps at the last plan

    @classmethod
    def for_run(cls, seconds: float, steps_per_epoch: int, cap_steps: int, saved: dict[str, Any] | None) -> TimeBudget:
        """A new plan, or the one saved with the checkpoint a run resumes from."""
        if saved:
            return cls(seconds, steps_per_epoch, cap_steps, int(saved["planned_steps"]), fixed=True)
        return cls(seconds, steps_per_epoch, cap_steps, cap_steps)

    def due(self, steps_this_call: int, step: int, epoch_end: bool) -> bool:
        """Whether to plan now: after this call's steps 1, 2, 4, 8, ..., every REPLAN_EVERY steps, at an epoch's
        end, and halfway to the planned end (every rank decides the same: it counts steps, not seconds)."""
        if self.fixed or steps_this_call < 1:
            return False
        power_of_two = steps_this_call & (steps_this_call - 1) == 0
        halfway = step >= self.last_steps + max(1, (self.planned_steps - self.last_steps) // 2)  # nearer the end
        return epoch_end or power_of_two or steps_this_call % REPLAN_EVERY == 0 or halfway

    def plan(self, elapsed_s: float, steps_done: int) -> int:
        """Plan the run's steps from its pace so far: `elapsed_s` pretraining seconds at `steps_done` steps."""
        if self.first is None:
            self.first = (elapsed_s, steps_done)
        since_s, since_steps = self.first
        measured = steps_done - since_steps
        pace = (elapsed_s - since_s) / measured if measured > 0 else elapsed_s / max(steps_done, 1)
        left = self.seconds * (1 - RESERVE_FRACTION) - self.end_reserve_s - elapsed_s
        steps = steps_done + max(0, math.floor(left / pace)) if pace > 0 else self.cap_steps
        at_least = steps_done + 1 if measured <= 0 else steps_done  # one step past the first, to measure a pace
        self.planned_steps = min(self.cap_steps, max(at_least, steps))
        self.last_steps = steps_done
        return self.planned_steps

    def total(self) -> int:
        """The run's planned steps: what the learning-rate schedule decays over (the cap until the pace settles)."""
        settled = self.fixed or (self.first is not None and self.measured >= SETTLED_AFTER)
        return max(self.planned_steps if settled else self.cap_steps, 1)

    @property
    def measured(self) -> int:
        return self.last_steps - self.first[1] if self.first is not None else 0

    @property
    def epochs(self) -> int:
        """Epochs the plan touches (the last may end part-way)."""
        return max(1, math.ceil(self.planned_steps / self.steps_per_epoch))

    def ended(self, step: int) -> bool:
        return step >= self.planned_steps

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the plan (and throughput.json reports)."""
        return {"time_budget_s": self.seconds, "planned_steps": self.planned_steps, "planned_epochs": self.epochs}

    def describe(self) -> str:
        epochs = self.planned_steps / self.steps_per_epoch
        return f"{_short(self.seconds)}: {self.planned_steps} steps ({epochs:.1f} epochs)"


def _short(seconds: float) -> str:
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"
