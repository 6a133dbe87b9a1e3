"""The sums that training, the losses and max-norm use: the same float32 additions on each
element whatever axes surround them, so a model in a program of K rounds as its single run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digitsjax.core.sums import pairwise_sum, spread


def rows(*shape: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(sum(shape)).standard_normal(shape, np.float32))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 128, 1000])
def test_a_pairwise_sum_is_the_sum_over_the_leading_axis(n):
    x = rows(n, 5)
    np.testing.assert_allclose(np.asarray(pairwise_sum(x)),
                               np.sum(np.asarray(x, np.float64), axis=0), rtol=1e-5, atol=1e-5)
    assert pairwise_sum(x).shape == (5,)


@pytest.mark.parametrize("n", [10, 128, 1000])
def test_a_pairwise_sum_is_the_same_bits_with_a_model_axis_around_it(n):
    models = rows(6, n, 10)
    batched = jax.jit(jax.vmap(pairwise_sum))(models)
    for k in range(6):
        np.testing.assert_array_equal(np.asarray(batched[k]),
                                      np.asarray(jax.jit(pairwise_sum)(models[k])))


def test_spread_repeats_a_row_and_its_gradient_is_the_pairwise_sum_of_the_rows():
    bias, upstream = rows(10), rows(128, 10)
    np.testing.assert_array_equal(np.asarray(spread(bias, 128)),
                                  np.broadcast_to(np.asarray(bias), (128, 10)))
    gradient = jax.grad(lambda b: jnp.sum(spread(b, 128) * upstream))(bias)
    np.testing.assert_array_equal(np.asarray(gradient), np.asarray(pairwise_sum(upstream)))


@pytest.mark.parametrize("shards", [2, 4, 8])
def test_a_batch_split_over_devices_is_summed_per_device_then_across(shards):
    """Each device's block of rows pairwise, then the devices' sums: one all-reduce on a mesh
    instead of a collective for every halving."""
    x = rows(128, 10)
    blocks = [pairwise_sum(block) for block in np.split(np.asarray(x), shards)]
    np.testing.assert_allclose(np.asarray(pairwise_sum(x, shards)), np.sum(blocks, axis=0),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pairwise_sum(x, shards)), np.asarray(pairwise_sum(x)),
                               rtol=1e-5, atol=1e-5)
