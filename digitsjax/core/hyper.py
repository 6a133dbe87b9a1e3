"""Hyperparameters that may differ between the models of one compiled program.

A sweep trains the grid points that share a program (the same array shapes and the same code:
layer sizes, batch size, epochs, activation, optimizer, schedule, loss, ...) as the K models of
one vmapped run, each with its own values of the `PER_MODEL` keys. The values travel in the
train state, `state.hyper` = {key: (K,) array}, so they are checkpointed with it; inside the
compiled step `with_values` puts model k's values where the pipeline's scalars were, and the
optimizer, dropout, max-norm and distortions compute with them.

Code that skips work for a value that is 0 (dropout, max-norm, distortions) asks
`known_zero(value)`: true only for a concrete 0, never for a per-model value, whose 0 must
compute exactly what skipping does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from digitsjax.core.config import Pipeline

SEED = "seed"
PER_MODEL = (
    SEED,
    "optimizer.learning_rate", "optimizer.momentum", "optimizer.weight_decay",
    "optimizer.final_lr_fraction", "optimizer.decay_per_epoch", "optimizer.min_learning_rate",
    "model.dropout", "model.input_dropout", "model.max_norm",
    "augment.rotation", "augment.shear", "augment.scale", "augment.translation",
    "augment.elastic_alpha", "augment.elastic_sigma",
)
"""Keys whose values may differ between the models of one program. The seed is each model's
root key (init, data order, dropout, distortions); the rest are numbers inside the step."""


@dataclass(frozen=True)
class PerModel:
    """The models of one program: for each key that differs between them, its K values."""

    values: Mapping[str, tuple[float, ...]]

    @property
    def num_models(self) -> int:
        return len(next(iter(self.values.values())))

    def seeds(self, pipeline: Pipeline) -> list[int]:
        """Model k's seed: its own when the seeds differ, else the one seed they share."""
        if SEED in self.values:
            return [int(seed) for seed in self.values[SEED]]
        return [pipeline.seed] * self.num_models

    def models(self, start: int, stop: int) -> PerModel:
        """Models start..stop-1 alone (a concurrent group of a program's models)."""
        return PerModel({key: v[start:stop] for key, v in self.values.items()})

    def point(self, pipeline: Pipeline, k: int) -> Pipeline:
        """Model k as the single run it equals: its values and seed, one model."""
        values = {key: v[k] for key, v in self.values.items()}
        return with_values(pipeline, values | {SEED: self.seeds(pipeline)[k],
                                               "train.num_models": 1})

    def state_values(self) -> dict[str, np.ndarray]:
        """What the train state carries: each numeric key's K values as float32."""
        return {key: np.asarray(v, np.float32) for key, v in self.values.items() if key != SEED}

    def to_json(self) -> dict[str, list[float]]:
        return {key: list(v) for key, v in self.values.items()}


def with_values(pipeline: Pipeline, values: Mapping[str, Any]) -> Pipeline:
    """`pipeline` with `values` (key -> value: `seed`, or dotted such as `train.num_models`; a
    per-model number may be a traced array) in place of its own. Not validated: the values come
    from validated pipelines."""
    for key, value in values.items():
        if "." not in key:
            pipeline = dataclasses.replace(pipeline, **{key: value})
            continue
        section_name, leaf = key.split(".")
        section = dataclasses.replace(getattr(pipeline, section_name), **{leaf: value})
        pipeline = dataclasses.replace(pipeline, **{section_name: section})
    return pipeline


def known_zero(value: Any) -> bool:
    """Whether `value` is a concrete 0: work it switches off may be skipped."""
    return not isinstance(value, jax.Array) and value == 0
