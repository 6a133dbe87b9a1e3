"""Epoch time of the compiled training chunk: no mesh vs a 1-device mesh vs all devices.

Side by side in one process, interleaved, so that load from other processes hits every variant
alike. "no mesh" is the pre-sharding path (`make_train_chunk(program)` on `jax.device_put`
data); the 1-device mesh must match it. Simulated CPU devices share the host's cores, so the
all-device figure on CPU measures the cost of partitioning, not a speed-up.

    python bench/data_parallel.py [PIPELINE] [--repeats 7]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/data_parallel.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from jax.sharding import Mesh

from digitsjax.core.config import load_pipeline
from digitsjax.core.program import init_state, make_train_chunk, program_of
from digitsjax.run import cluster as parallel
from digitsjax.run.mnist import load_mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="pipelines/mnist_mlp.toml")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    pipeline = load_pipeline(args.pipeline)
    data = load_mnist(pipeline.data)
    train = (data.train_images, data.train_labels)

    meshes: dict[str, Mesh | None] = {
        "no mesh": None, "1-device mesh": Mesh(jax.devices()[:1], (parallel.DATA_AXIS,))}
    if jax.device_count() > 1:
        meshes[f"{jax.device_count()}-device mesh"] = parallel.data_mesh()
    runs = {}
    for name, mesh in meshes.items():
        state = init_state(program_of(pipeline))
        if mesh is None:
            state, inputs = state, jax.device_put(train)
        else:
            parallel.check_batch_size(pipeline.train.batch_size, mesh.size)
            state, inputs = parallel.replicate(state, mesh), parallel.replicate(train, mesh)
        chunk = make_train_chunk(program_of(pipeline), mesh).lower(
            state, *inputs, num_steps=pipeline.steps_per_epoch).compile()
        runs[name] = [chunk, state, inputs, []]

    for _ in range(args.repeats):  # interleaved; each repeat trains one more epoch
        for run in runs.values():
            chunk, state, inputs, times = run
            started = time.perf_counter()
            state, sums = chunk(state, *inputs)
            jax.block_until_ready((state, sums))
            times.append(time.perf_counter() - started)
            run[1] = state

    examples = pipeline.steps_per_epoch * pipeline.train.batch_size
    baseline = statistics.median(runs["no mesh"][3])
    print(f"{pipeline.name}: {examples} examples/epoch, {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), median of {args.repeats} epochs")
    for name, (*_, times) in runs.items():
        median = statistics.median(times)
        print(f"  {name:>16}: {median:.3f} s/epoch  {examples / median:>10,.0f} ex/s  "
              f"x{median / baseline:.2f} the no-mesh time")


if __name__ == "__main__":
    main()
