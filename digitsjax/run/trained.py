"""A trained network read back from its workdir: what every use of one starts from.

Loading needs the manifest (the pipeline, and so the model and the model count) and one
checkpoint; none of the training machinery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitsjax.core.config import Pipeline
from digitsjax.core.model import params_sha256
from digitsjax.core.train import TrainState, init_train_state, model_params
from digitsjax.errors import CHECKPOINT, RESTART, CheckpointError
from digitsjax.run import backend, checkpoint
from digitsjax.run.workdir import recorded_pipeline


@dataclass
class Trained:
    """A restored workdir: its pipeline, the restored train state and checkpoint meta."""

    pipeline: Pipeline
    state: TrainState
    meta: dict[str, Any]
    step: int

    @property
    def params(self) -> Any:
        return self.state["params"]


def load_trained(workdir: str | Path, which: str = "latest") -> Trained:
    """Restore a workdir's checkpoint (`latest`, `best` or a step) with its pipeline.

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
                state, meta = checkpoint.restore(manager, step, init_train_state(pipeline))
            except CheckpointError as e:
                if _deleted_meanwhile(workdir, step) and attempt + 1 < READ_ATTEMPTS:
                    continue
                raise CheckpointError(e.problem, _other_checkpoint(manager, step)) from None
        finally:
            manager.close()
        return Trained(pipeline=pipeline, state=state, meta=meta, step=step)
    raise AssertionError("unreachable: the last attempt returns or raises")


READ_ATTEMPTS = 3


def _deleted_meanwhile(workdir: Path, step: int) -> bool:
    return not (checkpoint.checkpoint_dir(workdir) / str(step)).exists()


def _other_checkpoint(manager: Any, step: int) -> str:
    others = sorted(set(manager.all_steps()) - {step})
    return (f"choose another with {CHECKPOINT} (saved steps: {others})" if others
            else f"retrain with {RESTART}")


def fingerprints(pipeline: Pipeline, params: Any) -> dict[str, Any]:
    """The run's params_sha256; for K models also each model's own."""
    result: dict[str, Any] = {"params_sha256": params_sha256(params)}
    if pipeline.train.num_models > 1:
        result["model_params_sha256"] = [params_sha256(model_params(params, k))
                                         for k in range(pipeline.train.num_models)]
    return result
