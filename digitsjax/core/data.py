"""MNIST as the maths sees it: its image and class sizes, its registered splits, and the
arrays a run trains on, made from the raw uint8 arrays by a pure function.

Where the raw arrays come from (tfds' folder, the array cache, a manual download dir) is the
run layer's business: `digitsjax.run.mnist.load_mnist`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from digitsjax.errors import MNIST_DIR, DataError

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
"""MNIST's registered split sizes (tfds mnist 3.0.1); loaded arrays are checked against them."""


@dataclass(frozen=True)
class MNIST:
    """Train/validation/test arrays: images (N, 784) float32 in [0, 1], labels (N,) int32."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    checksums: dict[str, Any]
    """What the manifest records: tfds' registered file sha256s and the decoded arrays' sha256s."""


def mnist_from_raw(arrays: dict[str, np.ndarray], checksums: dict[str, Any],
                   validation_size: int) -> MNIST:
    """The training arrays from the raw ones (uint8 images (N, 28, 28) and labels (N,) as
    `{split}_images` and `{split}_labels` for both splits): flat float32 pixels in [0, 1],
    int32 labels, and the last `validation_size` training examples held out for validation.

    Raises `DataError` if a split does not have its registered size.
    """
    _check_sizes(arrays)
    n_train = len(arrays["train_labels"]) - validation_size
    images = {split: _to_float(arrays[f"{split}_images"]) for split in SPLIT_SIZES}
    labels = {split: arrays[f"{split}_labels"].astype(np.int32) for split in SPLIT_SIZES}
    return MNIST(
        train_images=images["train"][:n_train],
        train_labels=labels["train"][:n_train],
        val_images=images["train"][n_train:],
        val_labels=labels["train"][n_train:],
        test_images=images["test"],
        test_labels=labels["test"],
        checksums=checksums,
    )


def _check_sizes(arrays: dict[str, np.ndarray]) -> None:
    """Pipelines count their steps from the registered split sizes: the data must have them."""
    for split, size in SPLIT_SIZES.items():
        found = len(arrays[f"{split}_labels"])
        if found != size or len(arrays[f"{split}_images"]) != size:
            raise DataError(f"MNIST's {split} split has {found} examples, not {size}",
                            f"point {MNIST_DIR} at genuine MNIST")


def _to_float(images: np.ndarray) -> np.ndarray:
    """Pixels in [0, 1] as float32, in one pass: the same bits as `astype(float32) / 255`,
    without a second array of the split's size to allocate and fill."""
    return np.divide(images.reshape(len(images), NUM_PIXELS), np.float32(255), dtype=np.float32)
