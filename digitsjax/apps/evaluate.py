"""How good a trained network is: test loss and accuracy, per-class accuracy, confusion matrix.

Everything is computed over the whole test split in one compiled call; the confusion matrix is
built on the host from the predicted classes (10,000 integers).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from digitsjax.core.data import MNIST, NUM_CLASSES
from digitsjax.core.train import make_evaluate
from digitsjax.run import backend
from digitsjax.run.records import TEST_MODEL_ACCURACIES, TEST_MODEL_LOSSES, format_spread
from digitsjax.run.trained import Network, fingerprints


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


def evaluate_trained(network: Network, data: MNIST) -> dict[str, Any]:
    """Test loss and accuracy of a restored checkpoint, per digit, with its fingerprint.

    For K models: the ensemble's accuracy and confusion matrix, and each model's accuracy and
    fingerprint. Also where it was computed: backend, devices, matmul precision, determinism.
    """
    params, pipeline = network.params, network.pipeline
    evaluate = make_evaluate(pipeline, predictions=True)
    result = jax.device_get(evaluate(params, data.test_images, data.test_labels))
    matrix = confusion_matrix(data.test_labels, result.pop("predictions"))
    return ({"step": network.step}
            | {f"test_{key}": value.tolist() for key, value in result.items()}
            | {"per_class_accuracy": per_class_accuracy(matrix).tolist(),
               "confusion_matrix": matrix.tolist()}
            | fingerprints(pipeline, params)
            | backend.describe(pipeline))


def report_lines(result: dict[str, Any], seed: int) -> list[str]:
    """`evaluate_trained`'s result as a person reads it: the totals, each of K models (model k
    trained from `seed + k`), accuracy per digit, the confusion matrix, where it was computed."""
    ensemble = (f" {format_spread(result, 'test')}" if TEST_MODEL_ACCURACIES in result
                else "")
    lines = [f"step {result['step']}  test_loss {result['test_loss']:.4f}  "
             f"test_accuracy {100 * result['test_accuracy']:.2f}%{ensemble}  "
             f"params_sha256 {result['params_sha256']}"]
    lines += [f"  model {k} (seed {seed + k})  test_loss {result[TEST_MODEL_LOSSES][k]:.4f}  "
              f"test_accuracy {100 * result[TEST_MODEL_ACCURACIES][k]:.2f}%  params_sha256 {sha}"
              for k, sha in enumerate(result.get("model_params_sha256", []))]
    lines.append("accuracy per digit:  " + "  ".join(
        f"{digit}: {100 * accuracy:.1f}%"
        for digit, accuracy in enumerate(result["per_class_accuracy"])))
    lines.append("confusion matrix (rows: true digit, columns: predicted digit):")
    lines.append("      " + "".join(f"{digit:>6}" for digit in range(10)))
    lines += [f"{digit:>6}" + "".join(f"{count:>6}" for count in row)
              for digit, row in enumerate(result["confusion_matrix"])]
    lines.append(f"computed on: {backend.summary_line(result)}")
    return lines
