"""A plain JAX loop: NumPy shuffles and slices each batch on the host, a jitted step trains.

This is how most JAX training loops start out; the host gathers the next batch while the
device runs the current step (dispatch is asynchronous), but every step is a round trip.
It keeps JAX's defaults: float32 matmuls on a CPU, but TF32 ones on an NVIDIA GPU since Ampere,
and XLA's GPU programs as they come (not deterministic), so on a GPU its numerics are those of
digitsjax's `tensorfloat32 + deterministic=false` row.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import EpochLog, add_epochs_option, load_data, workload


def init_params(key, sizes):
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (fan_in, fan_out)) * np.sqrt(2 / fan_in),
                       jnp.zeros(fan_out)))
    return params


def mlp(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def main() -> None:
    parser = argparse.ArgumentParser()
    add_epochs_option(parser)
    w, data = workload(parser.parse_args().epochs), load_data()
    optimizer = optax.adam(optax.cosine_decay_schedule(w.learning_rate, w.total_steps))
    params = init_params(jax.random.PRNGKey(0), (784, *w.hidden, 10))
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(params):
            return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x), y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(mlp(params, x), -1) == y)

    x, y, b = data.train_images, data.train_labels, w.batch_size
    rng, log = np.random.default_rng(0), EpochLog("plain JAX loop")
    for _ in range(w.epochs):
        started = time.perf_counter()
        order = rng.permutation(len(x))
        for i in range(w.steps_per_epoch):
            idx = order[i * b:(i + 1) * b]
            params, opt_state, _loss = step(params, opt_state, x[idx], y[idx])
        jax.block_until_ready(params)
        seconds = time.perf_counter() - started
        log.epoch(seconds, float(accuracy(params, data.test_images, data.test_labels)))
    log.report(w.steps_per_epoch * b)


if __name__ == "__main__":
    main()
