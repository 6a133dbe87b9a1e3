"""What a K-model epoch's choices save: epochs of `lr_sweep`'s 32 models (mnist_mlp, 8 learning
rates x 4 seeds) as digitsjax trains them on one CPU device (two programs of 16 models side by
side, each seed's data order drawn once), beside one program of all 32, and one program of 32
that draws an order for each model.

`python bench/program_epoch.py [--repeat 3]`

The programs are compiled in this process and their epochs run in turn, `--repeat` times each;
the fastest epoch of each is printed, with its ratio to digitsjax's. Random pixels stand in for
MNIST (an epoch's arithmetic does not depend on them). Drawing the orders either way trains the
same bits, which is checked. On other backends digitsjax runs one program, and the first row
is that program.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from digitsjax.core.config import load_pipeline
from digitsjax.core.hyper import PerModel, with_values
from digitsjax.core.train import init_train_state, make_train_chunk, model_groups

REPO = Path(__file__).resolve().parents[1]
RATES = (1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2, 3e-2)  # pipelines/lr_sweep.toml's grid
SEEDS = (0, 1, 2, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    points = [(rate, seed) for rate in RATES for seed in SEEDS]
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.random((55_000, 784), dtype=np.float32))
    labels = jax.device_put(rng.integers(0, 10, 55_000).astype(np.int32))
    groups = [Programs(points[:16], images, labels), Programs(points[16:], images, labels)] \
        if len(model_groups(len(points))) == 2 else [Programs(points, images, labels)]
    ways = {"digitsjax": groups,
            "one program": [Programs(points, images, labels)],
            "one program, an order per model": [Programs(points, images, labels, True)]}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    with ThreadPoolExecutor(2) as pool:
        for _ in range(args.repeat + 1):  # the first epoch of each compiles
            for way, programs in ways.items():
                start = time.perf_counter()
                list(pool.map(Programs.epoch, programs))
                seconds[way].append(time.perf_counter() - start)
    fastest = {way: min(times[1:]) for way, times in seconds.items()}
    print(f"| one epoch of lr_sweep's 32 models | seconds (fastest of {args.repeat}) | ratio |")
    print("|---|---|---|")
    for way, value in fastest.items():
        print(f"| {way} | {value:.2f} | {value / fastest['digitsjax']:.2f} |")
    same = all(np.array_equal(a, b) for a, b in
               zip(*(jax.tree.leaves(ways[way][0].state["params"])
                     for way in ("one program", "one program, an order per model")), strict=True))
    print(f"an order per model: the same parameters, bit for bit: {same}")


class Programs:
    """One compiled K-model program of `points` (learning rate, seed) and its train state."""

    def __init__(self, points, images, labels, order_per_model: bool = False) -> None:
        per_model = PerModel({"optimizer.learning_rate": tuple(rate for rate, _ in points),
                              "seed": tuple(seed for _, seed in points)})
        program = with_values(load_pipeline(REPO / "pipelines" / "mnist_mlp.toml"),
                              {"train.num_models": len(points)})
        orders = tuple(range(len(points))) if order_per_model else \
            per_model.data_orders(program)
        self.chunk = make_train_chunk(program, data_orders=orders)
        self.state = init_train_state(program, per_model)
        self.images, self.labels, self.steps = images, labels, program.steps_per_epoch

    def epoch(self) -> None:
        self.state, sums = self.chunk(self.state, self.images, self.labels,
                                      num_steps=self.steps)
        jax.block_until_ready(sums)


if __name__ == "__main__":
    main()
