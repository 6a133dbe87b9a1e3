"""Successive halving: a sweep that stops its losing points early, decided by their records.

A `[sweep]` table with `rungs = [1, 3]` (epochs) and `keep = 0.25` trains every point to the
first rung, keeps the best quarter by validation accuracy, trains those to the next rung, keeps
the best quarter of them, and trains the last ones to `train.epochs`. Each stage is a program of
its own, compiled for its survivors only: a stopped point costs nothing more.

Which points go on is a pure function of the validation accuracies recorded at the rung (ties
go to the earlier point of the grid), never of timing; and a survivor continues from its own
state at the rung, with the learning-rate schedule of the whole run, so a point that reaches
the end is exactly its single run, bit for bit, the point of the full grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from digitsjax.errors import ConfigError

RUNGS = "rungs"
"""The `[sweep]` key that lists the epochs at which the points are ranked."""
KEEP = "keep"
"""The `[sweep]` key that says which fraction of the points goes on at each rung."""
DEFAULT_KEEP = 0.5


@dataclass(frozen=True)
class Halving:
    """A successive-halving schedule: rank at each rung, keep `keep` of the points."""

    rungs: tuple[int, ...]
    keep: float = DEFAULT_KEEP

    def stops(self, epochs: int) -> tuple[int, ...]:
        """The epoch at which each stage ends: the rungs, then the end of training."""
        return (*self.rungs, epochs)

    def kept(self, points: int) -> int:
        """How many of `points` go on past a rung: at least one."""
        return max(1, math.ceil(points * self.keep - 1e-9))

    def counts(self, points: int) -> list[int]:
        """How many points each stage trains, when none diverges."""
        counts = [points]
        for _ in self.rungs:
            counts.append(self.kept(counts[-1]))
        return counts

    def to_json(self) -> dict[str, Any]:
        return {RUNGS: list(self.rungs), KEEP: self.keep}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Halving:
        return cls(tuple(record[RUNGS]), record[KEEP])


def survivors(accuracies: Sequence[float | None], keep: int) -> list[int]:
    """The `keep` best points by validation accuracy, in their order: a point without one (it
    diverged, or was not evaluated) never goes on, and a tie goes to the earlier point."""
    ranked = sorted((i for i, a in enumerate(accuracies) if a is not None),
                    key=lambda i: (-accuracies[i], i))
    return sorted(ranked[:keep])


def check_rungs(rungs: Any, source: str) -> None:
    """Rungs are epochs, increasing, from 1 on."""
    whole = isinstance(rungs, list) and rungs and all(
        isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rungs)
    if not whole or any(a >= b for a, b in itertools.pairwise(rungs)):
        raise ConfigError(f"{source}: [sweep] {RUNGS} must list increasing epochs >= 1, got "
                          f"{rungs!r}", f"e.g. {RUNGS} = [1, 3]")


def check_keep(keep: Any, source: str) -> None:
    if not (isinstance(keep, int | float) and not isinstance(keep, bool) and 0 < keep < 1):
        raise ConfigError(f"{source}: [sweep] {KEEP} must be a fraction between 0 and 1 "
                          f"(both left out), got {keep!r}", f"e.g. {KEEP} = 0.25")


def halving_of(settings: dict[str, Any], epochs: int, source: str) -> Halving | None:
    """The schedule a `[sweep]` table's `rungs` and `keep` give (None without rungs), checked
    against the pipeline's `epochs`: the last rung must come before the end."""
    if RUNGS not in settings:
        if KEEP in settings:
            raise ConfigError(f"{source}: [sweep] {KEEP} is given without {RUNGS}",
                              f"add the epochs at which to rank the points, e.g. {RUNGS} = [1, 3]")
        return None
    rungs = settings[RUNGS]
    if rungs[-1] >= epochs:
        raise ConfigError(f"{source}: [sweep] {RUNGS} must end before train.epochs ({epochs}), "
                          f"got {rungs!r}", f"rank the points earlier, e.g. {RUNGS} = "
                          f"[{max(1, epochs // 5)}]")
    return Halving(tuple(rungs), float(settings.get(KEEP, DEFAULT_KEEP)))
