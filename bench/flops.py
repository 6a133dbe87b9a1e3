"""The arithmetic floor of an epoch: the network's training FLOPs over this machine's GEMM rate.

The FLOPs count only what training needs. Per example and layer of fan_in x fan_out: the
forward matmul (2 * fan_in * fan_out), the weight gradient (the same), and the gradient for the
layer's input (the same again, except for the first layer: the images need no gradient).
Biases, activations, the loss and Adam are O(fan_out) or O(params) and left out.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

GEMM_SIZES = (1024, 2048)


def training_flops_per_example(sizes: tuple[int, ...]) -> int:
    layers = list(itertools.pairwise(sizes))
    matmul = [2 * fan_in * fan_out for fan_in, fan_out in layers]
    return 2 * sum(matmul) + sum(matmul[1:])


def gemm_gflops(repeats: int = 5) -> dict[str, float]:
    """The best float32 GEMM rate of NumPy's BLAS and of XLA, over square sizes and repeats.

    The best, not the typical, rate: the floor should be what this machine can reach.
    """
    import jax
    import jax.numpy as jnp

    matmul = jax.jit(jnp.matmul)
    rates = {"numpy": 0.0, "jax": 0.0}
    for size in GEMM_SIZES:
        a = np.random.default_rng(0).standard_normal((size, size), np.float32)
        a_device = jax.device_put(a)
        matmul(a_device, a_device).block_until_ready()
        for name, run in (("numpy", lambda a=a: a @ a),
                          ("jax", lambda a=a_device: matmul(a, a).block_until_ready())):
            best = min(_seconds(run) for _ in range(repeats))
            rates[name] = max(rates[name], 2 * size**3 / best / 1e9)
    return rates


def _seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def matmul_only_epoch_seconds(sizes: tuple[int, ...], batch: int, steps: int,
                              repeats: int = 5) -> float:
    """Best time of one epoch of just the training matmuls, in one jitted `lax.scan`.

    The same shapes as the real epoch (forward, weight and input gradients, nothing else):
    the floor an epoch can reach with XLA's GEMMs at this batch size.
    """
    import jax
    import jax.numpy as jnp

    from digitsjax.core.train import compiler_options

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, sizes[0]), np.float32))
    weights = [jnp.asarray(rng.standard_normal(shape, np.float32) * 0.01)
               for shape in itertools.pairwise(sizes)]

    def step(weights, _):
        activations = [x]
        for w in weights:
            activations.append(activations[-1] @ w)
        delta = activations[-1] * 1e-3
        new = []
        for i in reversed(range(len(weights))):
            new.append(weights[i] - 1e-9 * (activations[i].T @ delta))
            if i:
                delta = delta @ weights[i].T
        return new[::-1], None

    epoch = jax.jit(lambda weights: jax.lax.scan(step, weights, length=steps)[0],
                    compiler_options=compiler_options())  # as digitsjax compiles its epoch
    weights = jax.block_until_ready(epoch(weights))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        weights = jax.block_until_ready(epoch(weights))
        best = min(best, time.perf_counter() - started)
    return best
