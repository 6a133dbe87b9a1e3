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

import jax
import numpy as np
from common import lr_sweep_program, random_training_set

from digitsjax.core.program import Program, init_state, make_train_chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    program = lr_sweep_program()
    images, labels = random_training_set(program.pipeline.train_size)
    ways = {"digitsjax": [Compiled(group, images, labels) for group in program.groups()],
            "one program": [Compiled(program, images, labels)],
            "one program, an order per model":
                [Compiled(program, images, labels, order_per_model=True)]}
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    with ThreadPoolExecutor(2) as pool:
        for _ in range(args.repeat + 1):  # the first epoch of each compiles
            for way, programs in ways.items():
                start = time.perf_counter()
                list(pool.map(Compiled.epoch, programs))
                seconds[way].append(time.perf_counter() - start)
    fastest = {way: min(times[1:]) for way, times in seconds.items()}
    print(f"| one epoch of lr_sweep's 32 models | seconds (fastest of {args.repeat}) | ratio |")
    print("|---|---|---|")
    for way, value in fastest.items():
        print(f"| {way} | {value:.2f} | {value / fastest['digitsjax']:.2f} |")
    same = all(np.array_equal(a, b) for a, b in
               zip(*(jax.tree.leaves(ways[way][0].state.params)
                     for way in ("one program", "one program, an order per model")), strict=True))
    print(f"an order per model: the same parameters, bit for bit: {same}")


class Compiled:
    """One compiled program (lr_sweep's or a group of its models) and its train state."""

    def __init__(self, program: Program, images, labels, order_per_model: bool = False) -> None:
        orders = tuple(range(program.num_models)) if order_per_model else None
        self.chunk = make_train_chunk(program, data_orders=orders)
        self.state = init_state(program)
        self.images, self.labels = images, labels
        self.steps = program.pipeline.steps_per_epoch

    def epoch(self) -> None:
        self.state, sums = self.chunk(self.state, self.images, self.labels,
                                      num_steps=self.steps)
        jax.block_until_ready(sums)


if __name__ == "__main__":
    main()
