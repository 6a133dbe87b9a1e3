"""Where a K-model program's models train: split over the devices, each model whole on one.

A program of K models (a sweep's points, or `train.num_models` seeds) on D devices trains on a
(model, data) mesh. With K >= D, the model axis takes every device: device d trains its own
K/D models, each on its own copy of the whole batch, and a step needs nothing from any other
device, so the compiled program holds no collective. A model's step is then what it is in a
one-device program of K/D models, which on XLA:CPU gives its single run's bits (the remedies in
program.py), on any number of devices and processes. With fewer models than devices, the model
axis takes the largest divisor of D that is at most K and the data axis the rest: each model's
batch is split over its devices, as a single run's is (sharding.py).

K need not divide evenly: the model axis is filled up with idle copies of the last model
(`pad_models`), trained and never read, so that every device runs the same program. The state a
checkpoint holds, the records and the fingerprints have the K models alone (`unpad_models`),
so a checkpoint does not depend on the devices that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL_AXIS = "model"
DATA_AXIS = "data"


@dataclass(frozen=True)
class Placement:
    """How `models` models sit on `model_shards` x `data_shards` devices."""

    models: int
    model_shards: int
    """Devices along the model axis: each trains its own `per_device` models."""
    data_shards: int
    """Devices along the data axis: each model's batch is split over these."""

    @property
    def devices(self) -> int:
        return self.model_shards * self.data_shards

    @property
    def padded(self) -> int:
        """The models the devices train: `models`, filled up to a multiple of the model axis."""
        return -(-self.models // self.model_shards) * self.model_shards

    @property
    def per_device(self) -> int:
        return self.padded // self.model_shards

    @property
    def idle(self) -> int:
        """Copies of the last model that only fill the model axis up."""
        return self.padded - self.models

    @property
    def split(self) -> bool:
        """Whether the models are split over devices (a mesh with a model axis)."""
        return self.model_shards > 1

    def line(self) -> str:
        """How the models are placed, in words: "32 models over 4 devices, 8 each"."""
        if self.devices == 1:
            return f"{_count(self.models, 'model')} on 1 device"
        if not self.split:
            return f"{_count(self.models, 'model')} over {self.devices} devices, each batch " \
                   f"split over all {self.devices}"
        text = f"{_count(self.models, 'model')} over {self.model_shards} devices, " \
               f"{self.per_device} each"
        if self.data_shards > 1:
            text = f"{_count(self.models, 'model')} over {self.devices} devices: " \
                   f"{self.model_shards} groups of {self.data_shards}, {self.per_device} " \
                   f"model(s) each, each batch split over its group's {self.data_shards}"
        if self.idle:
            text += f" ({_count(self.idle, 'idle copy', 'idle copies')} of the last fill the " \
                    "devices up)"
        return text

    def to_json(self) -> dict[str, int]:
        """What a manifest records of the placement."""
        return {"models": self.models, "model_shards": self.model_shards,
                "data_shards": self.data_shards, "models_per_device": self.per_device,
                "idle_models": self.idle}


def placement_for(models: int, devices: int) -> Placement:
    """Models split over every device when there are enough of them; data parallelism for the
    devices that are left (a single model: all of them)."""
    if models >= devices:
        return Placement(models, devices, 1)
    shards = max(d for d in range(1, models + 1) if devices % d == 0)
    return Placement(models, shards, devices // shards)


def padded_seeds(seeds: list[int], placement: Placement) -> list[int]:
    """The seeds of the models the devices train: the idle copies have the last one's."""
    return [*seeds, *[seeds[-1]] * placement.idle]


def local_orders(seeds: list[int], placement: Placement) -> tuple[int, ...]:
    """Each device's models' data orders, as indices among that device's own models: model i
    of a device sees the data in the order of the device's first model with its seed.

    Every device runs the same program, so the pattern is one for all; where the devices'
    patterns differ, each model draws its own order (the same order, drawn more often).
    """
    per = placement.per_device
    padded = padded_seeds(seeds, placement)
    patterns = set()
    for start in range(0, placement.padded, per):
        own = padded[start:start + per]
        patterns.add(tuple(own.index(seed) for seed in own))
    return patterns.pop() if len(patterns) == 1 else tuple(range(per))


def pad_models(tree: Any, placement: Placement) -> Any:
    """A K-model tree of host arrays (leading model axis) filled up with copies of model K-1."""
    if not placement.idle:
        return tree
    return _map(lambda a: np.concatenate([a, np.repeat(a[-1:], placement.idle, axis=0)]), tree)


def unpad_models(tree: Any, placement: Placement) -> Any:
    """`pad_models` undone: the first K models of every leaf."""
    if not placement.idle:
        return tree
    return _map(lambda a: a[:placement.models], tree)


def _map(fn: Any, tree: Any) -> Any:
    import jax

    return jax.tree.map(fn, tree)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"
