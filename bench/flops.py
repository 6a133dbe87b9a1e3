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

GEMM_SIZE = 2048


def training_flops_per_example(sizes: tuple[int, ...]) -> int:
    layers = list(itertools.pairwise(sizes))
    matmul = [2 * fan_in * fan_out for fan_in, fan_out in layers]
    return 2 * sum(matmul) + sum(matmul[1:])


def gemm_gflops(repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` float32 GEMM rate of NumPy's BLAS and of XLA, on 2048^3 products."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((GEMM_SIZE, GEMM_SIZE), np.float32)
    flops = 2 * GEMM_SIZE**3
    matmul = jax.jit(jnp.matmul)
    a_device = jax.device_put(a)
    matmul(a_device, a_device).block_until_ready()
    rates = {}
    for name, run in (("numpy", lambda: a @ a),
                      ("jax", lambda: matmul(a_device, a_device).block_until_ready())):
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        rates[name] = flops / best / 1e9
    return rates
