"""A trained network read back from its workdir: what every use of one starts from.

Loading needs the manifest (the program: the pipeline, and so the model and the model count,
and a sweep's per-model values) and one checkpoint; none of the training machinery. Evaluation,
prediction, serving, export, plots and the Python API all apply the same `Network`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import jax
import numpy as np

from digitsjax.core.config import Pipeline
from digitsjax.core.data import NUM_PIXELS
from digitsjax.core.model import make_classify, params_sha256
from digitsjax.core.program import Program, init_state
from digitsjax.core.train import model_params
from digitsjax.errors import CHECKPOINT, RESTART, CheckpointError, ImageError
from digitsjax.run import backend, checkpoint
from digitsjax.run.workdir import Workdir


@dataclass(frozen=True)
class Network:
    """A restored network: its program, the checkpoint's parameters, step and meta, and its
    classifier, compiled once per batch size (a server that always sends one image compiles
    once)."""

    program: Program
    params: Any
    """A list of layers {"w", "b"}, with a leading model axis if the program has K > 1."""
    step: int
    meta: dict[str, Any]
    """The checkpoint's own record (its epoch, and a mid-epoch checkpoint's sums)."""

    @cached_property
    def _classify(self) -> Callable[[Any, np.ndarray], jax.Array]:
        return make_classify(self.pipeline)

    @property
    def pipeline(self) -> Pipeline:
        return self.program.pipeline

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) or (N, 784) images in [0, 1], as MNIST's -> (N, 10) probabilities; K
        models' are their ensemble's, the models' probabilities averaged."""
        return np.asarray(self._classify(self.params, _flat(images)), np.float64)

    def classify(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) or (N, 784) images in [0, 1], as MNIST's -> (N,) predicted digits."""
        return self.probabilities(images).argmax(axis=-1)


def _flat(images: np.ndarray) -> np.ndarray:
    """`images` as the (N, 784) float32 the classifier takes, if they are images as MNIST's are
    (float pixels in [0, 1]): 0-255 pixels, or NaN, would be classified without a word."""
    images = np.asarray(images)
    if images.ndim == 3 and images.shape[1:] == (28, 28):
        flat = images.reshape(len(images), NUM_PIXELS)
    elif images.ndim == 2 and images.shape[1] == NUM_PIXELS:
        flat = images
    else:
        raise ImageError(f"images must be an array (N, 28, 28) or (N, {NUM_PIXELS}), got "
                         f"shape {images.shape}", "add a leading axis for one image: images[None]")
    if flat.dtype.kind != "f":
        raise ImageError(f"{_SCALED}, got {flat.dtype}", _SCALE)
    flat = flat.astype(np.float32, copy=False)
    if flat.size:
        _check_scaled(float(flat.min()), float(flat.max()))  # one pass each, on the host
    return flat


_SCALED = "images must be floats in [0, 1], as MNIST's pixels are scaled"
_SCALE = "divide 0-255 pixels by 255 (images / 255)"


def _check_scaled(lowest: float, highest: float) -> None:
    """A NaN anywhere makes the min and max NaN; an infinity makes one of them infinite."""
    if np.isnan(lowest) or np.isnan(highest):
        raise ImageError("images must be finite, got NaN", _FINITE)
    if np.isinf(lowest) or np.isinf(highest):
        raise ImageError("images must be finite, got infinity", _FINITE)
    if lowest < 0:
        raise ImageError(f"{_SCALED}, got values from {lowest:g} to {highest:g}", _SCALE)
    if highest > 1:
        raise ImageError(f"{_SCALED}, got values up to {highest:g}", _SCALE)


_FINITE = "replace them, e.g. with np.nan_to_num(images), or leave those images out"


def load_network(workdir: Workdir | str | Path, which: str = "latest",
                 model: int | None = None) -> Network:
    """Restore a workdir's checkpoint (`latest`, `best` or a step) with its program; with
    `model`, only that model of a K-model run (or of a sweep's program), as its single run.

    A run training in the workdir meanwhile may delete the checkpoint being read (it keeps only
    `checkpoint.keep`); then the newest complete one is read instead, a few times at most.
    """
    if not isinstance(workdir, Workdir):
        workdir = Workdir.open(workdir)
    program = workdir.program
    backend.request_determinism(program.pipeline.train.deterministic)  # before JAX's backend
    for attempt in range(READ_ATTEMPTS):
        manager = checkpoint.open_manager(workdir.path, program.pipeline.checkpoint,
                                          read_only=True)
        try:
            step = checkpoint.resolve_step(manager, which)
            try:
                template = init_state(program)
                state, meta = checkpoint.restore(manager, step, template)
            except CheckpointError as e:
                if _deleted_meanwhile(workdir.path, step) and attempt + 1 < READ_ATTEMPTS:
                    continue
                raise CheckpointError(e.problem, _other_checkpoint(manager, step)) from None
        finally:
            manager.close()
        network = Network(program, state.params, step, meta)
        return network if model is None else one_model(network, model)
    raise AssertionError("unreachable: the last attempt returns or raises")


def one_model(network: Network, k: int) -> Network:
    """Model k of a K-model run as the single run it equals: its own program (seed, and a
    sweep point's values) and its slice of the parameters."""
    count = network.program.num_models
    if not 0 <= k < count:
        raise CheckpointError(f"the run has {count} model{'s' if count > 1 else ''}, so there "
                              f"is no model {k}", f"choose one from 0 to {count - 1}")
    if count == 1:
        return network
    return Network(Program(network.program.model(k)), model_params(network.params, k),
                   network.step, network.meta)


READ_ATTEMPTS = 3


def _deleted_meanwhile(workdir: Path, step: int) -> bool:
    return not (checkpoint.checkpoint_dir(workdir) / str(step)).exists()


def _other_checkpoint(manager: Any, step: int) -> str:
    others = sorted(set(manager.all_steps()) - {step})
    return (f"choose another with {CHECKPOINT} (saved steps: {others})" if others
            else f"retrain with {RESTART}")


def fingerprints(pipeline: Pipeline, params: Any) -> dict[str, Any]:
    """The run's params_sha256; for K models also each model's own, hashed on every core at
    once (hashlib releases the GIL: a large sweep's parameters are hundreds of megabytes)."""
    host = jax.device_get(params)  # one transfer, not one per model and leaf
    k = pipeline.train.num_models
    if k == 1:
        return {"params_sha256": params_sha256(host)}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        models = pool.map(lambda i: params_sha256(model_params(host, i)), range(k))
        return {"params_sha256": params_sha256(host), "model_params_sha256": list(models)}
