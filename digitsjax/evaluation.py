"""How good a trained network is: test loss and accuracy, per-class accuracy, confusion matrix.

Everything is computed over the whole test split in one compiled call; the confusion matrix is
built on the host from the predicted classes (10,000 integers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digitsjax.config import ModelConfig
from digitsjax.data import MNIST, NUM_CLASSES
from digitsjax.model import Params, batched_forward, ensemble_probabilities, probabilities
from digitsjax.run import Trained, fingerprints
from digitsjax.train import make_evaluate


def make_classify(config: ModelConfig) -> Callable[[Params, jax.Array], jax.Array]:
    """A jitted `(params, images (N, 784)) -> class probabilities (N, 10)`, without dropout.

    It compiles once per batch size, so a server that always sends one image compiles once.
    The params of K models (`train.num_models`, stacked on a leading axis) classify as their
    ensemble: the models' probabilities averaged.
    """

    @jax.jit
    def classify(params: Params, images: jax.Array) -> jax.Array:
        if params[0]["w"].ndim == 3:  # (K, fan_in, fan_out): a stack of K models
            outputs = jax.vmap(batched_forward, in_axes=(0, None, None))(params, images, config)
            return ensemble_probabilities(outputs, config)
        return probabilities(batched_forward(params, images, config), config)

    return classify


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """(10, 10) counts: row = true digit, column = predicted digit."""
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """The fraction of each true digit classified correctly (NaN for a digit never seen)."""
    totals = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), totals, out=np.full(len(matrix), np.nan),
                     where=totals > 0)


def predict_classes(trained: Trained, images: np.ndarray) -> np.ndarray:
    """Predicted digits (N,) for flat images (N, 784)."""
    classify = make_classify(trained.pipeline.model)
    return np.asarray(jnp.argmax(classify(trained.state["params"], images), axis=-1))


def evaluate_trained(trained: Trained, data: MNIST) -> dict[str, Any]:
    """Test loss and accuracy of a restored checkpoint, per digit, with its fingerprint.

    For K models: the ensemble's accuracy and confusion matrix, and each model's accuracy and
    fingerprint.
    """
    params = trained.state["params"]
    result = jax.device_get(make_evaluate(trained.pipeline)(params, data.test_images,
                                                            data.test_labels))
    matrix = confusion_matrix(data.test_labels, predict_classes(trained, data.test_images))
    return ({"step": trained.step}
            | {f"test_{key}": value.tolist() for key, value in result.items()}
            | {"per_class_accuracy": per_class_accuracy(matrix).tolist(),
               "confusion_matrix": matrix.tolist()}
            | fingerprints(trained.pipeline, params))
