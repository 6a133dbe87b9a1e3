"""One compiled program of 1 or K models: what digitsjax trains.

A `Program` is a pipeline and, for a sweep, each model's own values of the per-model keys.
With `train.num_models = K` and no per-model values, model k is the single run with seed
`seed + k`; a sweep's program holds grid points that share their array shapes and code, model
k with its point's values (`core.hyper.PerModel`). Either way model k ends at its single run's
parameters, bit for bit on XLA:CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from digitsjax.core.config import Pipeline
from digitsjax.core.hyper import SEED, PerModel, with_values


@dataclass(frozen=True)
class Program:
    """The models one compiled program trains: `pipeline.train.num_models` of them."""

    pipeline: Pipeline
    per_model: PerModel | None = None
    """A sweep's points: each model's own values of the keys on which they differ."""

    @property
    def num_models(self) -> int:
        return self.pipeline.train.num_models

    @property
    def is_sweep(self) -> bool:
        """Whether the models are grid points trained with different numbers (their ensemble is
        nobody's network), rather than one pipeline's seeds."""
        return self.per_model is not None

    def seeds(self) -> list[int]:
        """Model k's seed: its root key for init, data order, dropout and distortions."""
        if self.per_model is not None:
            return self.per_model.seeds(self.pipeline)
        return [self.pipeline.seed + k for k in range(self.num_models)]

    def model(self, k: int) -> Pipeline:
        """Model k as the single run it equals: its seed, its point's values, one model."""
        if self.per_model is not None:
            return self.per_model.point(self.pipeline, k)
        if self.num_models == 1:
            return self.pipeline
        return with_values(self.pipeline, {SEED: self.pipeline.seed + k, "train.num_models": 1})


def program_of(pipeline: Pipeline) -> Program:
    """A pipeline's own program: its `train.num_models` seeds."""
    return Program(pipeline)
