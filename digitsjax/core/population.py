"""Population-based training: a sweep whose points, every few epochs, copy a better point's
state and move their numbers away from it, decided by their records and the seed alone.

A `[sweep]` table with `exploit_every = 2` trains its points (the population) for 2 epochs;
then the worst `exploit_fraction` of them by validation accuracy each copy the state
(parameters and optimizer state) of a point drawn from the best as many, and perturb the
copied per-model values (learning rate, dropout, ...): each multiplied by one of the `perturb`
factors, kept inside the values the table gives for that key. The population trains on, and so
every `exploit_every` epochs to `train.epochs`.

Every choice (who copies, whom, which factor) is drawn from the pipeline's seed, the epoch and
the validation accuracies recorded there, never from timing: the same file gives the same
population, a run killed at any moment resumes to the same fingerprints, and a replay of the
search reaches them again. A copy keeps its own root key, so its data order and dropout stay
its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from digitsjax.errors import ConfigError

EVERY = "exploit_every"
"""The `[sweep]` key: every how many epochs the population exploits and explores."""
FRACTION = "exploit_fraction"
"""The `[sweep]` key: which fraction of the population copies the best as many."""
PERTURB = "perturb"
"""The `[sweep]` key: the factors a copied value is multiplied by, one drawn per value."""
BOUNDS = "bounds"
"""The record's key (not the table's) of the perturbed keys' bounds."""
DEFAULT_FRACTION = 0.25
DEFAULT_PERTURB = (0.8, 1.25)
EXPLOIT_STREAM = 0x9B7
"""Folded with the seed and the epoch into the generator of one exploit step's draws."""


@dataclass(frozen=True)
class Population:
    """A population-based training schedule."""

    every: int
    fraction: float = DEFAULT_FRACTION
    perturb: tuple[float, ...] = DEFAULT_PERTURB
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """The keys it perturbs, each kept within the least and the most value the grid gives."""

    def stops(self, epochs: int) -> tuple[int, ...]:
        """The epoch at which each stage ends: every `every` epochs, then the end of training."""
        return (*range(self.every, epochs, self.every), epochs)

    def copies(self, members: int) -> int:
        """How many members copy another at an exploit step: at least one, at most half."""
        return min(members // 2, max(1, math.floor(members * self.fraction + 1e-9)))

    def to_json(self) -> dict[str, Any]:
        return {EVERY: self.every, FRACTION: self.fraction, PERTURB: list(self.perturb),
                BOUNDS: {key: list(b) for key, b in self.bounds.items()}}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Population:
        return cls(record[EVERY], record[FRACTION], tuple(record[PERTURB]),
                   {key: tuple(b) for key, b in record[BOUNDS].items()})


@dataclass(frozen=True)
class Exploit:
    """One member's copy at an exploit step: whose state it took, its values before and after."""

    epoch: int
    member: int
    parent: int
    before: Mapping[str, float]
    after: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "member": self.member, "parent": self.parent,
                "before": dict(self.before), "after": dict(self.after)}


def exploit(population: Population, accuracies: Sequence[float | None],
            values: Sequence[Mapping[str, float]], seed: int, epoch: int) -> list[Exploit]:
    """The copies of one exploit step, by member: the worst members (a diverged one, with no
    accuracy, is the worst of all; ties go against the later member) each copy a member drawn
    from the best as many, and their values become the parent's, each times a drawn factor,
    rounded to 4 significant digits and kept within its key's bounds."""
    count, bounds = population.copies(len(accuracies)), population.bounds
    if count == 0:
        return []
    ranked = sorted(range(len(accuracies)),
                    key=lambda i: (accuracies[i] is None, -(accuracies[i] or 0.0), i))
    best, worst = ranked[:count], sorted(ranked[-count:])
    draws = np.random.default_rng([seed, EXPLOIT_STREAM, epoch])
    copies = []
    for member in worst:
        parent = best[int(draws.integers(len(best)))]
        after = {key: _within(_round(values[parent][key] * float(draws.choice(population.perturb))),
                              bounds[key]) for key in sorted(bounds)}
        copies.append(Exploit(epoch, member, parent, dict(values[member]), after))
    return copies


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _within(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])


def check_every(every: Any, source: str) -> None:
    if not (isinstance(every, int) and not isinstance(every, bool) and every >= 1):
        raise ConfigError(f"{source}: [sweep] {EVERY} must be a whole number of epochs >= 1, "
                          f"got {every!r}", f"e.g. {EVERY} = 2")


def check_fraction(fraction: Any, source: str) -> None:
    if not (isinstance(fraction, int | float) and not isinstance(fraction, bool)
            and 0 < fraction <= 0.5):
        raise ConfigError(f"{source}: [sweep] {FRACTION} must be a fraction above 0 and at most "
                          f"0.5 (the worst copy the best as many), got {fraction!r}",
                          f"e.g. {FRACTION} = 0.25")


def check_perturb(factors: Any, source: str) -> None:
    if not (isinstance(factors, list) and factors and all(
            isinstance(f, int | float) and not isinstance(f, bool) and math.isfinite(f) and f > 0
            for f in factors)):
        raise ConfigError(f"{source}: [sweep] {PERTURB} must list factors > 0, got {factors!r}",
                          f"e.g. {PERTURB} = [0.8, 1.25]")


def population_of(settings: Mapping[str, Any], epochs: int, source: str) -> Population | None:
    """The schedule a `[sweep]` table's settings give (None without `exploit_every`), checked
    against the pipeline's `epochs`: the population must exploit at least once before the end."""
    if EVERY not in settings:
        if given := [key for key in (FRACTION, PERTURB) if key in settings]:
            raise ConfigError(f"{source}: [sweep] {given[0]} is given without {EVERY}",
                              f"add how often the population exploits, e.g. {EVERY} = 2")
        return None
    if settings[EVERY] >= epochs:
        raise ConfigError(f"{source}: [sweep] {EVERY} must be less than train.epochs ({epochs}), "
                          f"got {settings[EVERY]}", f"exploit more often, e.g. {EVERY} = "
                          f"{max(1, epochs // 3)}")
    return Population(settings[EVERY], float(settings.get(FRACTION, DEFAULT_FRACTION)),
                      tuple(float(f) for f in settings.get(PERTURB, DEFAULT_PERTURB)))
