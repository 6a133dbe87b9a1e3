"""Losses of one example, by name: the `train.loss` registry.

Each maps one output (10,) and an integer label to a scalar; training and evaluation vmap it over
a batch and take the mean. Their sums are `pairwise_sum`s (sums.py), so a model's loss and
gradients are the same bits alone and in a program of K models. A loss's `needs_logits` says
whether it expects the linear output (softmax cross-entropy applies its own softmax), which
config validation checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from digitsjax.core.data import NUM_CLASSES
from digitsjax.core.sums import pairwise_sum


@dataclass(frozen=True)
class Loss:
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    needs_logits: bool


def _log_softmax(output: jax.Array) -> jax.Array:
    """`jax.nn.log_softmax`, its sum over the classes a pairwise sum."""
    shifted = output - jax.lax.stop_gradient(jnp.max(output))
    return shifted - jnp.log(pairwise_sum(jnp.exp(shifted)))


def _softmax_cross_entropy(output: jax.Array, label: jax.Array) -> jax.Array:
    return -_log_softmax(output)[label]


def _quadratic(output: jax.Array, label: jax.Array) -> jax.Array:
    """Nielsen's cost: 1/2 ||a - y||^2 with one-hot y."""
    return 0.5 * pairwise_sum((output - jax.nn.one_hot(label, NUM_CLASSES)) ** 2)


LOSSES: dict[str, Loss] = {
    "softmax_cross_entropy": Loss(_softmax_cross_entropy, needs_logits=True),
    "quadratic": Loss(_quadratic, needs_logits=False),
}


def example_loss(output: jax.Array, label: jax.Array, loss: str) -> jax.Array:
    """The loss of one example; `label` is an integer class, one-hot encoded where needed."""
    return LOSSES[loss].fn(output, label)


def mean_loss(outputs: jax.Array, labels: jax.Array, loss: str, shards: int = 1) -> jax.Array:
    """The mean loss of a batch: outputs (B, 10), labels (B,), split over `shards` devices."""
    losses = jax.vmap(LOSSES[loss].fn)(outputs, labels)
    return pairwise_sum(losses, shards) / outputs.shape[0]
