"""Sums that round the same whatever axes surround them.

XLA picks the order in which it adds up an axis from the shape of the whole array: a bias's
gradient summed over a batch of 128 is added in one order for (128, 10) in a single run and in
another for (K, 128, 10) in a program of K models, and the two round differently. Model k of K
then ends its first step an ulp or two from its single run, and epochs of training carry that
far enough to change which point of a sweep is best. Written as a balanced tree of elementwise
adds, a sum performs the same float32 additions on each element whether `jax.vmap` adds a
model axis around it or not, so the K models of a program train their single runs' bits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def pairwise_sum(rows: jax.Array, shards: int = 1) -> jax.Array:
    """The sum over the leading axis: the first half of the rows added elementwise to the
    second, until one row is left (an odd last row joins the next level).

    With `shards` > 1 (a batch split over that many devices, in consecutive blocks), each
    device sums its own rows so, and XLA adds the devices' sums (one all-reduce): halving the
    rows across devices would cost a collective at every level, several times a step's work.
    """
    if shards > 1:
        blocks = rows.reshape(shards, rows.shape[0] // shards, *rows.shape[1:])
        return jnp.sum(jax.vmap(_pairwise)(blocks), axis=0)
    return _pairwise(rows)


def _pairwise(rows: jax.Array) -> jax.Array:
    while rows.shape[0] > 1:
        half = rows.shape[0] // 2
        paired = rows[:half] + rows[half:2 * half]
        rows = paired if rows.shape[0] % 2 == 0 else \
            jnp.concatenate([paired, rows[2 * half:]])
    return rows[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def spread(row: jax.Array, n: int, shards: int = 1) -> jax.Array:
    """`row` repeated `n` times, (n, ...), whose gradient is `pairwise_sum` of the rows'
    gradients (a broadcast's would be XLA's own sum)."""
    return jnp.broadcast_to(row, (n, *row.shape))


def _spread_forward(row: jax.Array, n: int, shards: int) -> tuple[jax.Array, None]:
    return spread(row, n, shards), None


def _spread_backward(n: int, shards: int, _: None, gradients: jax.Array) -> tuple[jax.Array]:
    return (pairwise_sum(gradients, shards),)


spread.defvjp(_spread_forward, _spread_backward)
