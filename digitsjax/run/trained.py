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
from digitsjax.core.train import TrainState, model_params
from digitsjax.errors import CHECKPOINT, POINT, RESTART, CheckpointError, ImageError
from digitsjax.run import backend, checkpoint
from digitsjax.run.lock import holder_of
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
    try:
        images = np.asarray(images)
    except ValueError:  # nested lists of unequal lengths
        raise ImageError(f"{_SHAPED}, got lists of unequal lengths", "give equal rows") from None
    if images.ndim == 3 and images.shape[1:] == (28, 28):
        flat = images.reshape(len(images), NUM_PIXELS)
    elif images.ndim == 2 and images.shape[1] == NUM_PIXELS:
        flat = images
    else:
        raise ImageError(f"{_SHAPED}, got shape {images.shape}",
                         "add a leading axis for one image: images[None]")
    if flat.dtype.kind != "f":
        raise ImageError(f"{_SCALED}, got {flat.dtype}", _SCALE)
    flat = flat.astype(np.float32, copy=False)
    if flat.size:
        _check_scaled(float(flat.min()), float(flat.max()))  # one pass each, on the host
    return flat


_SHAPED = f"images must be an array (N, 28, 28) or (N, {NUM_PIXELS})"
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

    A run training in the workdir meanwhile saves checkpoints and deletes the oldest (it keeps
    only `checkpoint.keep`), also while they are being listed or read. A checkpoint that changed
    under the reader is read again, from a new listing, a few times at most; a read that still
    fails while a run holds the workdir says so rather than call that run's checkpoint damaged.
    """
    if not isinstance(workdir, Workdir):
        workdir = Workdir.open(workdir)
    program = workdir.program
    backend.request_determinism(program.pipeline.train.deterministic)  # before JAX's backend
    for attempt in range(READ_ATTEMPTS):
        read = _read(workdir.path, program, which, last=attempt + 1 == READ_ATTEMPTS)
        if read is not None:
            network = Network(program, *read)
            return network if model is None else one_model(network, model)
    raise AssertionError("unreachable: the last attempt returns or raises")


READ_ATTEMPTS = 4


def _read(workdir: Path, program: Program, which: str,
          last: bool) -> tuple[Any, int, dict[str, Any]] | None:
    """(params, step, meta) of the checkpoint `which` names; None when it changed while it was
    read and this is not the `last` attempt."""
    where = checkpoint.checkpoint_dir(workdir)
    try:
        manager = checkpoint.open_manager(workdir, program.pipeline.checkpoint, read_only=True)
    except FileNotFoundError as e:  # orbax listed a step, then found it gone: a deletion
        if not last:
            return None
        problem = f"a checkpoint in {where} vanished while it was listed ({e.filename})"
        raise _being_trained(workdir, problem) or CheckpointError(problem, "try again") from None
    try:
        listed = sorted(manager.all_steps())
        if not listed and not last:  # listed between a deletion and the next step's rename
            return None
        if not listed and (busy := _being_trained(workdir, f"no checkpoint in {where}")):
            raise busy
        step = checkpoint.resolve_step(manager, which)
        try:
            state, meta = checkpoint.restore(manager, step, init_state(program))
        except CheckpointError as e:
            now = _steps_on_disk(workdir)
            if not last and now != listed:  # saved, deleted or both since it was listed
                return None
            busy = _being_trained(workdir, f"checkpoint {step} in {where} could not be read")
            raise busy or CheckpointError(e.problem, _other_checkpoint(now, step)) from None
    finally:
        manager.close()
    return state.params, step, meta


def trained_state(workdir: Workdir, step: int) -> TrainState:
    """The whole train state (every model's) that `workdir`'s checkpoint `step` holds: where a
    sweep's stage continues its points from (apps/sweep.py)."""
    manager = checkpoint.open_manager(workdir.path, workdir.pipeline.checkpoint, read_only=True)
    try:
        return checkpoint.restore(manager, step, init_state(workdir.program))[0]
    except CheckpointError as e:
        raise CheckpointError(e.problem, f"run the sweep again with {RESTART}") from None
    finally:
        manager.close()


def _steps_on_disk(workdir: Path) -> list[int]:
    """The complete checkpoints' steps as the folder holds them now (orbax writes a step under
    another name and renames it when complete)."""
    try:
        return sorted(int(p.name) for p in checkpoint.checkpoint_dir(workdir).iterdir()
                      if p.name.isdigit())
    except OSError:
        return []


def _being_trained(workdir: Path, problem: str) -> CheckpointError | None:
    """A failed read of a workdir that a run holds: what failed may be that run's work in
    progress, not damage, so the fix is to read again, never to start the run over."""
    holder = holder_of(workdir)
    if holder is None:
        return None
    return CheckpointError(f"{problem}: {workdir} is being trained by {holder}, which writes "
                           "its checkpoints and deletes old ones meanwhile",
                           f"try again, or choose another with {CHECKPOINT}")


def refuse_points_ensemble(workdir: Workdir) -> None:
    """Refuse a sweep's program folder as one network: its K models are grid points trained
    with different numbers, so their ensemble, what loading it whole gives, is nobody's.

    For whatever hands a user a network without a chosen model (a command, the Python API);
    readers of the program as trained (verify, a sweep's summary) load it whole.
    """
    if workdir.program.is_sweep:
        raise CheckpointError(
            f"{workdir.path} is a program of a sweep: its {workdir.program.num_models} models "
            "are grid points trained with different numbers, and their ensemble is nobody's "
            "network", f"choose one of its points: the sweep's folder {workdir.path.parent} "
            f"with {POINT} (row N of its sweep.csv)")


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


def _other_checkpoint(steps: list[int], step: int) -> str:
    others = sorted(set(steps) - {step})
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
