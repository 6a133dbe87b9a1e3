"""What every benchmark script shares: the workload, the data, and how a result is reported.

Each script trains the network of `pipelines/mnist_mlp.toml` (784-128-64-10 ReLU, softmax
cross-entropy, Adam with the pipeline's learning rate and cosine decay, batch 128, float32) on
the same 55,000 training images that digitsjax loads, in its own fresh process. Each epoch is
timed without evaluation; the test accuracy after each epoch gives the time from process start
(the moment the driver launched it, $BENCH_T0) to the target accuracy. `--epochs N` (which
`run.py` passes on) trains fewer epochs, for a quick look; the cosine schedule spans them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
TARGET_ACCURACY = 0.978
T0_ENV = "BENCH_T0"
RESULT_PREFIX = "BENCH_RESULT "
PROCESS_START = float(os.environ.get(T0_ENV, time.time()))  # else: when this was imported

sys.path.insert(0, str(REPO))  # digitsjax from this checkout, also without `pip install -e`


@dataclass(frozen=True)
class Workload:
    hidden: tuple[int, ...]
    batch_size: int
    learning_rate: float
    epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def workload(epochs: int | None = None) -> Workload:
    from digitsjax.core.config import load_pipeline

    p = load_pipeline(PIPELINE)
    assert (p.optimizer.name, p.optimizer.schedule, p.model.activation) == \
        ("adam", "cosine", "relu"), "the benchmark scripts implement Adam, cosine decay, ReLU"
    return Workload(hidden=p.model.hidden, batch_size=p.train.batch_size,
                    learning_rate=p.optimizer.learning_rate, epochs=epochs or p.train.epochs,
                    steps_per_epoch=p.steps_per_epoch)


def add_epochs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="train N epochs instead of the pipeline's")


def load_data():
    """The digitsjax split: train (55,000), val, test as float32 (N, 784) and int32 labels."""
    from digitsjax.core.config import load_pipeline
    from digitsjax.run.mnist import load_mnist

    data_config = load_pipeline(PIPELINE).data
    return load_mnist(data_config)


def seconds_since_start() -> float:
    return time.time() - PROCESS_START


class EpochLog:
    """Collects per-epoch training seconds and test accuracy; prints one JSON result line."""

    def __init__(self, name: str):
        self.name = name
        self.epoch_seconds: list[float] = []
        self.test_accuracy: list[float] = []
        self.seconds_to_target: float | None = None

    def epoch(self, seconds: float, test_accuracy: float, at: float | None = None) -> None:
        """Call right after evaluating (or pass `at`, the seconds since process start then)."""
        self.epoch_seconds.append(seconds)
        self.test_accuracy.append(float(test_accuracy))
        if self.seconds_to_target is None and test_accuracy >= TARGET_ACCURACY:
            self.seconds_to_target = seconds_since_start() if at is None else at
        print(f"{self.name}: epoch {len(self.epoch_seconds)} {seconds:.3f} s "
              f"test {100 * test_accuracy:.2f}%", file=sys.stderr)

    def report(self, examples_per_epoch: int, **extra) -> None:
        print(RESULT_PREFIX + json.dumps({
            "name": self.name, "epoch_seconds": self.epoch_seconds,
            "test_accuracy": self.test_accuracy, "seconds_to_target": self.seconds_to_target,
            "examples_per_epoch": examples_per_epoch, "total_seconds": seconds_since_start(),
            **extra}), flush=True)


def lr_sweep_program():
    """The program `digitsjax sweep pipelines/lr_sweep.toml` trains: its 32 points (8 learning
    rates x 4 seeds, read from the file) as one program."""
    from digitsjax.apps.sweep import SweepProgram, make_variants, read_grid
    from digitsjax.core.config import load_pipeline

    path = REPO / "pipelines" / "lr_sweep.toml"
    variants = make_variants(load_pipeline(path, for_sweep=True), read_grid(path, []))
    return SweepProgram("program-1", variants).program


def random_training_set(size: int):
    """Random pixels and labels on the device, where MNIST's would be (an epoch's arithmetic
    does not depend on them)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    return (jax.device_put(rng.random((size, 784), dtype=np.float32)),
            jax.device_put(rng.integers(0, 10, size).astype(np.int32)))
