"""Optimizers and learning-rate schedules by name: the `optimizer.name` and `.schedule` registries.

Each entry is a line of optax, as in optax's own alias table; config validation reads the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:
    from digitsjax.core.config import OptimizerConfig

Optimizer = Callable[[optax.Schedule, "OptimizerConfig"], optax.GradientTransformation]


@dataclass(frozen=True)
class Schedule:
    make: Callable[[OptimizerConfig, int, int], optax.Schedule]
    """(optimizer config, the run's total steps, steps per epoch) -> learning rate by step."""
    over_total_steps: bool
    """Whether a step's rate depends on the run's length: then a finished run cannot be
    extended with more epochs (the longer run differs from its first step)."""


SCHEDULES: dict[str, Schedule] = {
    "constant": Schedule(lambda c, total, epoch: optax.constant_schedule(c.learning_rate),
                         over_total_steps=False),
    # x decay_per_epoch after every epoch, down to min_learning_rate (Ciresan et al. 2010)
    "epoch_decay": Schedule(lambda c, total, epoch: _epoch_decay(c, epoch),
                            over_total_steps=False),
    "cosine": Schedule(lambda c, total_steps, epoch: optax.cosine_decay_schedule(
        c.learning_rate, decay_steps=total_steps, alpha=c.final_lr_fraction),
        over_total_steps=True),
    "warmup_cosine": Schedule(lambda c, total_steps, epoch: _warmup_cosine(c, total_steps),
                              over_total_steps=True),
}
"""Each schedule takes its numbers from the config as they come: Python floats for a run, or a
sweep's per-model arrays inside the compiled step (then nothing may branch on them)."""


def _epoch_decay(c: OptimizerConfig, steps_per_epoch: int) -> optax.Schedule:
    """x decay_per_epoch after every epoch, down to min_learning_rate (Ciresan et al. 2010):
    optax.exponential_decay with staircase=True and an end value, written out so that a
    per-model decay can be an array (optax branches on its value)."""
    def rate(step):
        epochs = jnp.floor(step / steps_per_epoch)
        return jnp.maximum(c.learning_rate * jnp.power(c.decay_per_epoch, epochs),
                           c.min_learning_rate)
    return rate


def _warmup_cosine(c: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then a cosine decay to final_lr_fraction of the peak."""
    decay_steps = max(total_steps, c.warmup_steps + 1)
    if not isinstance(c.learning_rate, jax.Array):
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=c.learning_rate, warmup_steps=c.warmup_steps,
            decay_steps=decay_steps, end_value=c.learning_rate * c.final_lr_fraction)
    # what optax builds, without its branch on the peak's value
    return optax.join_schedules([
        optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps),
        optax.cosine_decay_schedule(c.learning_rate, decay_steps - c.warmup_steps,
                                    alpha=c.final_lr_fraction)], [c.warmup_steps])

OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": lambda lr, c: optax.sgd(lr),
    "momentum": lambda lr, c: optax.sgd(lr, momentum=c.momentum),
    "nesterov": lambda lr, c: optax.sgd(lr, momentum=c.momentum, nesterov=True),
    "adam": lambda lr, c: optax.adam(lr),
    "adamw": lambda lr, c: optax.adamw(lr, weight_decay=c.weight_decay),
    "rmsprop": lambda lr, c: optax.rmsprop(lr, momentum=c.momentum),
}


def make_optimizer(config: OptimizerConfig, total_steps: int,
                   steps_per_epoch: int) -> optax.GradientTransformation:
    """The pipeline's optimizer, its learning rate following the schedule over `total_steps`."""
    schedule = SCHEDULES[config.schedule].make(config, total_steps, steps_per_epoch)
    return OPTIMIZERS[config.name](schedule, config)
