"""digitsjax from Python: train a pipeline, load a trained network, classify arrays or pictures.

The command line is a thin layer over the package; this module is the same for notebooks and
other programs, with plain types in and out (paths, lists of overrides, NumPy arrays, dicts).
Importing it changes nothing in the process; a mistake raises a `digitsjax.errors.UserError`
whose message says what is wrong and how to fix it.

    from digitsjax import api

    final = api.train("pipelines/mnist_mlp.toml", "runs/a", ["train.epochs=3"])
    net = api.load("runs/a")                 # or api.load("runs/a", checkpoint="best")
    net.classify(images)                     # (N, 28, 28) or (N, 784) in [0, 1] -> (N,) digits
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitsjax.apps.evaluate import evaluate_trained, make_classify
from digitsjax.apps.predict import FileAnswer, Predictor, predict_files
from digitsjax.core.config import Pipeline, load_pipeline
from digitsjax.core.data import NUM_PIXELS
from digitsjax.errors import ImageError
from digitsjax.files import DEFAULT_WORKDIR_ROOT
from digitsjax.run.loop import train_pipeline
from digitsjax.run.mnist import load_mnist
from digitsjax.run.trained import Trained, load_trained


def train(pipeline: str | Path | Pipeline, workdir: str | Path | None = None,
          overrides: Sequence[str] = (), *, restart: bool = False, mnist_dir: str | None = None,
          echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `pipeline` (a TOML file, or a `Pipeline`) into `workdir`, continuing what is there.

    `overrides` are `section.key=value` strings, as `--set` takes them. The workdir defaults to
    checkpoints/<pipeline name>. Returns the last epoch's record with its `params_sha256`.
    """
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline, overrides)
    elif overrides:
        raise TypeError("overrides apply to a pipeline file; change a Pipeline with "
                        "dataclasses.replace")
    workdir = Path(workdir) if workdir is not None else DEFAULT_WORKDIR_ROOT / pipeline.name
    return train_pipeline(pipeline, workdir, mnist_dir=mnist_dir, restart=restart, echo=echo)


def load(workdir: str | Path, checkpoint: str = "latest") -> Network:
    """A trained network from `workdir`: its `latest` or `best` checkpoint, or a step ("858")."""
    return Network(load_trained(workdir, str(checkpoint)))


@dataclass
class Network:
    """A restored network: its pipeline, parameters and step, and ways to apply it."""

    trained: Trained
    _classify: Callable[..., Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._classify = make_classify(self.trained.pipeline)  # compiled once per batch size

    @property
    def pipeline(self) -> Pipeline:
        return self.trained.pipeline

    @property
    def params(self) -> Any:
        """The parameters: a list of layers {"w", "b"}, with a leading model axis if K > 1."""
        return self.trained.params

    @property
    def step(self) -> int:
        return self.trained.step

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) or (N, 784) images in [0, 1], as MNIST's -> (N, 10) probabilities."""
        return np.asarray(self._classify(self.params, _flat(images)), np.float64)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) or (N, 784) images in [0, 1], as MNIST's -> (N,) predicted digits."""
        return self.probabilities(images).argmax(axis=-1)

    def classify_files(self, paths: Sequence[str | Path]) -> list[FileAnswer]:
        """Pictures (PNG, JPEG), normalised as MNIST's digits were: one answer per file, with
        its `prediction` or its `error` (a bad file costs the others nothing)."""
        return predict_files(paths, lambda: Predictor(self.trained))[1]

    def evaluate(self, mnist_dir: str | None = None) -> dict[str, Any]:
        """Test loss and accuracy, per digit, the confusion matrix and the fingerprint."""
        return evaluate_trained(self.trained, load_mnist(self.pipeline.data, mnist_dir))


def _flat(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim == 3 and images.shape[1:] == (28, 28):
        return images.reshape(len(images), NUM_PIXELS)
    if images.ndim == 2 and images.shape[1] == NUM_PIXELS:
        return images
    raise ImageError(f"images must be an array (N, 28, 28) or (N, {NUM_PIXELS}), got shape "
                     f"{images.shape}", "add a leading axis for one image: images[None]")
