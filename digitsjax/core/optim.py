"""Optimizers and learning-rate schedules by name: the `optimizer.name` and `.schedule` registries.

Each entry is a line of optax, as in optax's own alias table; config validation reads the keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import optax

if TYPE_CHECKING:
    from digitsjax.core.config import OptimizerConfig

Schedule = Callable[["OptimizerConfig", int], optax.Schedule]
Optimizer = Callable[[optax.Schedule, "OptimizerConfig"], optax.GradientTransformation]

SCHEDULES: dict[str, Schedule] = {
    "constant": lambda c, total_steps: optax.constant_schedule(c.learning_rate),
    "cosine": lambda c, total_steps: optax.cosine_decay_schedule(
        c.learning_rate, decay_steps=total_steps, alpha=c.final_lr_fraction),
    "warmup_cosine": lambda c, total_steps: optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=c.learning_rate, warmup_steps=c.warmup_steps,
        decay_steps=max(total_steps, c.warmup_steps + 1),
        end_value=c.learning_rate * c.final_lr_fraction),
}

OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": lambda lr, c: optax.sgd(lr),
    "momentum": lambda lr, c: optax.sgd(lr, momentum=c.momentum),
    "nesterov": lambda lr, c: optax.sgd(lr, momentum=c.momentum, nesterov=True),
    "adam": lambda lr, c: optax.adam(lr),
    "adamw": lambda lr, c: optax.adamw(lr, weight_decay=c.weight_decay),
    "rmsprop": lambda lr, c: optax.rmsprop(lr, momentum=c.momentum),
}


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The pipeline's optimizer, its learning rate following the schedule over `total_steps`."""
    schedule = SCHEDULES[config.schedule](config, total_steps)
    return OPTIMIZERS[config.name](schedule, config)
