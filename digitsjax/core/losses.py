"""Losses of one example, by name: the `train.loss` registry.

Each maps one output (10,) and an integer label to a scalar; training and evaluation vmap it over
a batch and take the mean. A loss's `needs_logits` says whether it expects the linear output
(softmax cross-entropy applies its own softmax), which config validation checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from digitsjax.core.data import NUM_CLASSES


@dataclass(frozen=True)
class Loss:
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    needs_logits: bool


def _softmax_cross_entropy(output: jax.Array, label: jax.Array) -> jax.Array:
    return -jax.nn.log_softmax(output)[label]


def _quadratic(output: jax.Array, label: jax.Array) -> jax.Array:
    """Nielsen's cost: 1/2 ||a - y||^2 with one-hot y."""
    return 0.5 * jnp.sum((output - jax.nn.one_hot(label, NUM_CLASSES)) ** 2)


LOSSES: dict[str, Loss] = {
    "softmax_cross_entropy": Loss(_softmax_cross_entropy, needs_logits=True),
    "quadratic": Loss(_quadratic, needs_logits=False),
}


def example_loss(output: jax.Array, label: jax.Array, loss: str) -> jax.Array:
    """The loss of one example; `label` is an integer class, one-hot encoded where needed."""
    return LOSSES[loss].fn(output, label)


def mean_loss(outputs: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
    """The mean loss of a batch: outputs (B, 10), labels (B,)."""
    return jnp.mean(jax.vmap(LOSSES[loss].fn)(outputs, labels))
