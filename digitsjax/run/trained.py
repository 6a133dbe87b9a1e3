"""A trained network read back from its workdir: what every use of one starts from.

Loading needs the manifest (the pipeline, and so the model and the model count) and one
checkpoint; none of the training machinery.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from digitsjax.core.config import Pipeline
from digitsjax.core.hyper import PerModel
from digitsjax.core.model import params_sha256
from digitsjax.core.program import Program, init_state, model_state
from digitsjax.core.train import TrainState, model_params
from digitsjax.errors import CHECKPOINT, RESTART, CheckpointError
from digitsjax.run import backend, checkpoint
from digitsjax.run.workdir import recorded_per_model, recorded_pipeline


@dataclass
class Trained:
    """A restored workdir: its pipeline, the restored train state and checkpoint meta."""

    pipeline: Pipeline
    state: TrainState
    meta: dict[str, Any]
    step: int

    @property
    def params(self) -> Any:
        return self.state.params


def load_trained(workdir: str | Path, which: str = "latest", model: int | None = None) -> Trained:
    """Restore a workdir's checkpoint (`latest`, `best` or a step) with its pipeline; with
    `model`, only that model of a K-model run (or of a sweep's program), as its single run.

    A run training in the workdir meanwhile may delete the checkpoint being read (it keeps only
    `checkpoint.keep`); then the newest complete one is read instead, a few times at most.
    """
    workdir = Path(workdir)
    pipeline = recorded_pipeline(workdir)
    backend.request_determinism(pipeline.train.deterministic)  # before JAX starts its backend
    for attempt in range(READ_ATTEMPTS):
        manager = checkpoint.open_manager(workdir, pipeline.checkpoint, read_only=True)
        try:
            step = checkpoint.resolve_step(manager, which)
            try:
                template = init_state(Program(pipeline, recorded_per_model(workdir)))
                state, meta = checkpoint.restore(manager, step, template)
            except CheckpointError as e:
                if _deleted_meanwhile(workdir, step) and attempt + 1 < READ_ATTEMPTS:
                    continue
                raise CheckpointError(e.problem, _other_checkpoint(manager, step)) from None
        finally:
            manager.close()
        trained = Trained(pipeline=pipeline, state=state, meta=meta, step=step)
        return trained if model is None else one_model(trained, model,
                                                       recorded_per_model(workdir))
    raise AssertionError("unreachable: the last attempt returns or raises")


def one_model(trained: Trained, k: int, per_model: PerModel | None) -> Trained:
    """Model k of a K-model run as the single run it equals: its own pipeline (seed, and a
    sweep point's values) and its slice of the state."""
    pipeline, count = trained.pipeline, trained.pipeline.train.num_models
    if not 0 <= k < count:
        raise CheckpointError(f"the run has {count} model{'s' if count > 1 else ''}, so there "
                              f"is no model {k}", f"choose one from 0 to {count - 1}")
    if count == 1:
        return trained
    program = Program(pipeline, per_model)
    state = model_state(trained.state, k).replace(hyper=None, diverged_at=None)
    return dataclasses.replace(trained, pipeline=program.model(k), state=state)


READ_ATTEMPTS = 3


def _deleted_meanwhile(workdir: Path, step: int) -> bool:
    return not (checkpoint.checkpoint_dir(workdir) / str(step)).exists()


def _other_checkpoint(manager: Any, step: int) -> str:
    others = sorted(set(manager.all_steps()) - {step})
    return (f"choose another with {CHECKPOINT} (saved steps: {others})" if others
            else f"retrain with {RESTART}")


def fingerprints(pipeline: Pipeline, params: Any) -> dict[str, Any]:
    """The run's params_sha256; for K models also each model's own, hashed on every core at
    once (hashlib releases the GIL): a sweep's 1,024 `mnist_mlp` models hold 450 MB."""
    host = jax.device_get(params)  # one transfer, not one per model and leaf
    k = pipeline.train.num_models
    if k == 1:
        return {"params_sha256": params_sha256(host)}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        models = pool.map(lambda i: params_sha256(model_params(host, i)), range(k))
        return {"params_sha256": params_sha256(host), "model_params_sha256": list(models)}
