"""What on-device augmentation costs: one training epoch with and without `[augment]`, side by
side in one process, for networks from small to the ones augmentation is for.

`python bench/augment_cost.py [--repeats N]` prints, per network, the median epoch seconds
without and with affine + elastic distortions, and the distortions' share of the augmented
epoch. Epochs are compiled once and timed after a warm-up; the data are MNIST's real images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # digitsjax from this checkout, also without `pip install -e`

import jax  # noqa: E402

from digitsjax.core.config import load_pipeline  # noqa: E402
from digitsjax.core.program import init_state, make_train_chunk, program_of  # noqa: E402
from digitsjax.run.mnist import load_mnist, resolve_mnist_dir  # noqa: E402

NETWORKS = {  # pipeline file, overrides
    "mnist_mlp 784-128-64-10": ("mnist_mlp", ()),
    "simard2003 784-800-10": ("simard2003", ()),
    "mnist_best": ("mnist_best", ()),
}
DISTORTIONS = ("augment.rotation=10", "augment.shear=10", "augment.scale=0.1",
               "augment.translation=2", "augment.elastic_alpha=34", "augment.elastic_sigma=4")
OFF = ("augment.rotation=0", "augment.shear=0", "augment.scale=0", "augment.translation=0",
       "augment.elastic_alpha=0")


def epoch_seconds(pipeline, images, labels, repeats: int) -> float:
    chunk, state = make_train_chunk(program_of(pipeline)), init_state(program_of(pipeline))
    state, sums = chunk(state, images, labels, num_steps=pipeline.steps_per_epoch)  # compile
    jax.block_until_ready(sums)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, sums = chunk(state, images, labels, num_steps=pipeline.steps_per_epoch)
        jax.block_until_ready(sums)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    base = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml")
    data = load_mnist(base.data, resolve_mnist_dir(None, base.data))
    images, labels = jax.device_put(data.train_images), jax.device_put(data.train_labels)
    print(f"{jax.default_backend()} backend, {jax.device_count()} device(s)\n")
    print("| network | batch | epoch without (s) | epoch with affine + elastic (s) | "
          "distortions' share |")
    print("|---|---|---|---|---|")
    for label, (name, overrides) in NETWORKS.items():
        path = REPO / "pipelines" / f"{name}.toml"
        plain = load_pipeline(path, [*overrides, *OFF])
        augmented = load_pipeline(path, [*overrides, *DISTORTIONS])
        without = epoch_seconds(plain, images, labels, args.repeats)
        with_ = epoch_seconds(augmented, images, labels, args.repeats)
        print(f"| {label} | {plain.train.batch_size} | {without:.2f} | {with_:.2f} | "
              f"{(with_ - without) / with_:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
