"""What drawing each seed's data order once saves: epochs of `lr_sweep`'s program (mnist_mlp,
8 learning rates x 4 seeds) with each order drawn once per seed, beside the same program with
an order drawn for each point, as before.

`python bench/program_epoch.py [--repeat 3]`

Both programs are compiled in this process and their epochs run in turn, `--repeat` times each;
the fastest epoch of each is printed, with the ratio. Random pixels stand in for MNIST (an
epoch's arithmetic does not depend on them). Both train the same bits, which is checked.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from digitsjax.core.config import load_pipeline
from digitsjax.core.hyper import PerModel, with_values
from digitsjax.core.train import init_train_state, make_train_chunk

REPO = Path(__file__).resolve().parents[1]
RATES = (1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 3e-2)  # pipelines/lr_sweep.toml's grid
SEEDS = (0, 1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    points = [(rate, seed) for rate in RATES for seed in SEEDS]
    per_model = PerModel({"optimizer.learning_rate": tuple(rate for rate, _ in points),
                          "seed": tuple(seed for _, seed in points)})
    program = with_values(load_pipeline(REPO / "pipelines" / "mnist_mlp.toml"),
                          {"train.num_models": len(points)})
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.random((program.train_size, 784), dtype=np.float32))
    labels = jax.device_put(rng.integers(0, 10, program.train_size).astype(np.int32))
    ways = {"an order per seed": per_model.data_orders(program),
            "an order per point": tuple(range(len(points)))}
    chunks = {way: make_train_chunk(program, data_orders=orders) for way, orders in ways.items()}
    states = {way: init_train_state(program, per_model) for way in ways}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.repeat + 1):  # the first epoch of each compiles
        for way, chunk in chunks.items():
            start = time.perf_counter()
            states[way], sums = chunk(states[way], images, labels,
                                      num_steps=program.steps_per_epoch)
            jax.block_until_ready(sums)
            seconds[way].append(time.perf_counter() - start)
    same = all(np.array_equal(a, b) for a, b in zip(*(jax.tree.leaves(s["params"])
                                                       for s in states.values()), strict=True))
    fastest = {way: min(times[1:]) for way, times in seconds.items()}
    print(f"| one epoch of lr_sweep's 32 models | seconds (fastest of {args.repeat}) | ratio |")
    print("|---|---|---|")
    for way, value in fastest.items():
        print(f"| {way} | {value:.2f} | {value / fastest['an order per point']:.2f} |")
    print(f"same parameters, bit for bit: {same}")


if __name__ == "__main__":
    main()
