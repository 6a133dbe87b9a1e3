"""The arithmetic floor of an epoch: the network's training FLOPs over this machine's GEMM rate.

The FLOPs count only what training needs. Per example and layer of fan_in x fan_out: the
forward matmul (2 * fan_in * fan_out), the weight gradient (the same), and the gradient for the
layer's input (the same again, except for the first layer: the images need no gradient).
Biases, activations, the loss and Adam are O(fan_out) or O(params) and left out.

Every multiply here asks for true float32 (`Precision.HIGHEST`), the numerics of digitsjax's
default `train.matmul_precision`: a GPU would otherwise use TF32 and report a floor that the
float32 reference cannot reach. On a GPU the GEMMs are larger (small ones cannot fill it) and
NumPy's CPU rate is left out, since no contender computes there.

`python bench/flops.py` measures in its own process and prints one result line: `run.py` reads
it from there so that it never starts a JAX backend itself (on a GPU, that backend would hold
memory the contenders need).
"""

from __future__ import annotations

import functools
import itertools
import json
import time

import numpy as np

GEMM_SIZES = (1024, 2048)
GPU_GEMM_SIZES = (4096, 8192)


def training_flops_per_example(sizes: tuple[int, ...]) -> int:
    layers = list(itertools.pairwise(sizes))
    matmul = [2 * fan_in * fan_out for fan_in, fan_out in layers]
    return 2 * sum(matmul) + sum(matmul[1:])


def gemm_gflops(sizes: tuple[int, ...] = GEMM_SIZES, repeats: int = 5,
                numpy: bool = True) -> dict[str, float]:
    """The best float32 GEMM rate of XLA (and NumPy's BLAS), over square sizes and repeats.

    The best, not the typical, rate: the floor should be what this machine can reach.
    """
    import jax
    import jax.numpy as jnp

    matmul = jax.jit(functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST))
    rates = {"numpy": 0.0, "jax": 0.0} if numpy else {"jax": 0.0}
    for size in sizes:
        a = np.random.default_rng(0).standard_normal((size, size), np.float32)
        a_device = jax.device_put(a)
        matmul(a_device, a_device).block_until_ready()
        runs = {"numpy": lambda a=a: a @ a,
                "jax": lambda a=a_device: matmul(a, a).block_until_ready()}
        for name in rates:
            best = min(_seconds(runs[name]) for _ in range(repeats))
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
    mm = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)

    def step(weights, _):
        activations = [x]
        for w in weights:
            activations.append(mm(activations[-1], w))
        delta = activations[-1] * 1e-3
        new = []
        for i in reversed(range(len(weights))):
            new.append(weights[i] - 1e-9 * mm(activations[i].T, delta))
            if i:
                delta = mm(delta, weights[i].T)
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


def main() -> None:
    """Measure both floors for the benchmark's workload; print them as one result line."""
    import jax
    from common import RESULT_PREFIX, workload

    w = workload()
    sizes = (784, *w.hidden, 10)
    gpu = jax.default_backend() == "gpu"
    gemm_sizes = GPU_GEMM_SIZES if gpu else GEMM_SIZES
    rates = gemm_gflops(gemm_sizes, numpy=not gpu)
    print(RESULT_PREFIX + json.dumps({
        "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
        "gemm_sizes": gemm_sizes, "gemm_gflops": rates,
        "flops_per_example": training_flops_per_example(sizes),
        "matmuls_alone_epoch_seconds": matmul_only_epoch_seconds(sizes, w.batch_size,
                                                                 w.steps_per_epoch)}),
        flush=True)


if __name__ == "__main__":
    main()
