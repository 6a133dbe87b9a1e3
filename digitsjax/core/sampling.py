"""Points drawn from ranges, for a sweep that samples instead of listing every value.

A `[sweep]` key may give a range (`{log_uniform = [1e-4, 1e-1]}`) instead of a list, and
`samples = N` says how many points to draw; the ranged keys are drawn together, point i of each
making sample i. The points are a Halton sequence (low-discrepancy: N points cover the ranges
more evenly than N independent draws, and the first n of them already do) rotated by a shift
drawn from the pipeline's seed, so the same file draws the same points on every machine and
another seed draws others. Floats keep 4 significant digits: a point's name is its values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from digitsjax.errors import ConfigError

SAMPLES = "samples"
"""The `[sweep]` key that says how many points to draw from its ranges."""


class Samples(list):
    """One key's drawn values, in sample order: the keys that hold them are read together
    (point i of each), where the keys that hold plain lists make a product."""


@dataclass(frozen=True)
class Sampler:
    """How a range is checked, and which value a number u in [0, 1) picks from it."""

    expects: str
    valid: Callable[[Any], bool]
    pick: Callable[[Any, float], Any]


def _bounds(valid: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda b: (isinstance(b, list) and len(b) == 2 and all(map(valid, b))
                      and b[0] < b[1])


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _round(x: float) -> float:
    return float(f"{x:.4g}")


SAMPLERS: Mapping[str, Sampler] = {
    "uniform": Sampler("[low, high], low < high",
                       _bounds(_number), lambda b, u: _round(b[0] + (b[1] - b[0]) * u)),
    "log_uniform": Sampler("[low, high], 0 < low < high",
                           _bounds(lambda x: _number(x) and x > 0),
                           lambda b, u: _round(math.exp(math.log(b[0])
                                                        + (math.log(b[1] / b[0])) * u))),
    "integer": Sampler("[low, high] whole numbers, low < high, both included",
                       _bounds(lambda x: isinstance(x, int) and not isinstance(x, bool)),
                       lambda b, u: b[0] + min(int(u * (b[1] - b[0] + 1)), b[1] - b[0])),
    "choice": Sampler("a non-empty list of values",
                      lambda b: isinstance(b, list) and len(b) > 0,
                      lambda b, u: b[min(int(u * len(b)), len(b) - 1)]),
}

PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53)
"""Halton's bases, one per ranged key: as many keys as primes may be ranged."""


def is_range(value: Any) -> bool:
    """Whether a `[sweep]` value is a range: a table with one key, a sampler's name."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SAMPLERS


def check_range(key: str, value: dict[str, Any], source: str) -> None:
    (kind, bounds), = value.items()
    if not SAMPLERS[kind].valid(bounds):
        raise ConfigError(f"{source}: [sweep] {key} = {{{kind} = {bounds!r}}} must give "
                          f"{SAMPLERS[kind].expects}",
                          f"e.g. {key} = {{{kind} = {_EXAMPLES[kind]}}}")


_EXAMPLES = {"uniform": "[0.0, 0.5]", "log_uniform": "[1e-4, 1e-1]", "integer": "[64, 256]",
             "choice": '["relu", "tanh"]'}


def draw(ranges: Mapping[str, dict[str, Any]], samples: int, seed: int) -> dict[str, Samples]:
    """`samples` points from `ranges` ({key: {kind: bounds}}), drawn from `seed`."""
    if len(ranges) > len(PRIMES):
        raise ConfigError(f"a sweep may draw at most {len(PRIMES)} ranged keys, got "
                          f"{len(ranges)}", "give the others as lists")
    units = halton(samples, len(ranges), seed)
    drawn = {}
    for d, (key, value) in enumerate(ranges.items()):
        (kind, bounds), = value.items()
        drawn[key] = Samples(SAMPLERS[kind].pick(bounds, float(u)) for u in units[:, d])
    return drawn


def halton(count: int, dims: int, seed: int) -> np.ndarray:
    """(count, dims) points in [0, 1): Halton's sequence from its first point on, each
    coordinate shifted modulo 1 by a number drawn from `seed` (a Cranley-Patterson rotation)."""
    shift = np.random.default_rng([seed, _STREAM]).random(dims)
    points = np.array([[_radical_inverse(i, PRIMES[d]) for d in range(dims)]
                       for i in range(1, count + 1)]).reshape(count, dims)
    return (points + shift) % 1.0


_STREAM = 0x5EED5
"""Sets the shifts apart from any other use of the pipeline's seed."""


def _radical_inverse(i: int, base: int) -> float:
    """i's digits in `base`, mirrored about the point: 1, 2, 3 in base 2 -> .5, .25, .75."""
    value, scale = 0.0, 1.0 / base
    while i:
        i, digit = divmod(i, base)
        value += digit * scale
        scale /= base
    return value
