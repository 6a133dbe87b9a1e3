"""Orbax checkpoints of the train state, under `WORKDIR/checkpoints/<step>/`.

Each checkpoint is a composite of two items: `state` (params, optimizer state, step, root key:
everything the next step depends on) and `meta` (JSON: epoch, pipeline fingerprint, metrics).
Orbax writes each step into a temporary directory and renames it when complete, so a
checkpoint that exists is a checkpoint that was finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from digitsjax.config import CheckpointConfig
from digitsjax.errors import CheckpointError

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "val_accuracy"

absl_logging.set_verbosity(absl_logging.ERROR)  # orbax narrates every save at INFO/WARNING


def checkpoint_dir(workdir: Path) -> Path:
    return Path(workdir).absolute() / CHECKPOINT_DIR


def _best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


def open_manager(workdir: Path, config: CheckpointConfig | None = None,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the last `config.keep` checkpoints, plus the best by val accuracy."""
    config = config or CheckpointConfig()
    policies: list[pp.PreservationPolicy] = [pp.LatestN(n=config.keep)]
    if config.keep_best:
        policies.append(pp.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        best_fn=_best_metric,  # only so that orbax writes the metrics; the policy decides
        best_mode="max",
        cleanup_tmp_directories=not read_only,  # debris of a save that was killed
        enable_async_checkpointing=True,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, state: dict[str, Any], meta: dict[str, Any],
         metrics: dict[str, float] | None = None) -> None:
    """Start an async save of `state` at its step; `metrics` feed the keep-best policy."""
    step = int(jax.device_get(state["step"]))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)),
                 metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int,
            like_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore `step` into the structure, shapes and shardings of `like_state`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {step} in {manager.directory} does not match this pipeline's model or "
            f"optimizer ({str(e).splitlines()[0]}); use --restart or another --workdir") from None
    return restored["state"], restored["meta"]


def resolve_step(manager: ocp.CheckpointManager, which: str) -> int:
    """`latest`, `best` or a step number -> a step that exists in the workdir."""
    steps = manager.all_steps()
    if not steps:
        raise CheckpointError(f"no checkpoints in {manager.directory}; train first with "
                              "`digitsjax train PIPELINE --workdir DIR`")
    if which == "latest":
        return max(steps)
    if which == "best":
        scored = {step: m[BEST_METRIC] for step in steps
                  if (m := manager.metrics(step)) and BEST_METRIC in m}
        if not scored:
            raise CheckpointError(f"no checkpoint in {manager.directory} has a "
                                  f"{BEST_METRIC}; use --checkpoint latest")
        return max(scored, key=lambda step: (scored[step], step))  # as BestN breaks ties
    if which.isdigit() and int(which) in steps:
        return int(which)
    raise CheckpointError(f"--checkpoint {which!r} is not latest, best or one of the saved "
                          f"steps {sorted(steps)}")
