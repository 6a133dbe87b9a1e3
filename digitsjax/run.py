"""A run: train a pipeline into a workdir (resuming what is there), and load what it left.

This is the only module that touches the filesystem during training; `train.py` stays pure.
The loop dispatches compiled chunks without waiting, and synchronises with the device once
per epoch (metrics, evaluation) and at checkpoints. A SIGTERM or SIGINT makes the end of the
current chunk a checkpoint, after which the run stops with `Preempted` (see preemption.py).
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from digitsjax import checkpoint, parallel
from digitsjax.config import Pipeline, pipeline_from_dict, pipeline_sha256, pipeline_to_dict
from digitsjax.data import load_mnist
from digitsjax.errors import CheckpointError, DivergenceError
from digitsjax.model import params_sha256
from digitsjax.preemption import Preempted, PreemptionGuard
from digitsjax.tensorboard_events import ScalarWriter, remove_event_files
from digitsjax.train import (
    TrainState,
    chunk_plan,
    init_train_state,
    make_evaluate,
    make_train_chunk,
    model_params,
)
from digitsjax.workdir import (
    MANIFEST,
    METRICS,
    append_metrics,
    build_manifest,
    differences,
    read_manifest,
    truncate_metrics,
    write_json_atomic,
)

# Pipeline keys that do not change what a run computes: a workdir may be resumed with them
# changed (e.g. MNIST moved to another folder, or a different checkpoint cadence).
RESULT_NEUTRAL = ("name", "data.mnist_dir", "data.tfds_data_dir", "checkpoint.")


@dataclass
class Trained:
    """A restored workdir: its pipeline, the restored train state and checkpoint meta."""

    pipeline: Pipeline
    state: TrainState
    meta: dict[str, Any]
    step: int


def train_pipeline(pipeline: Pipeline, workdir: str | Path, *, mnist_dir: str | None = None,
                   restart: bool = False, progress: bool = False,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train into `workdir`, continuing from its newest intact checkpoint; return the final record.

    Uses every device of every process (call `parallel.initialize` first to join several);
    all processes run this together, and only process 0 writes files other than checkpoints.
    On SIGTERM/SIGINT the current chunk finishes and is checkpointed, and `Preempted` is raised
    once that checkpoint is complete.
    """
    started = time.perf_counter()
    mesh = parallel.data_mesh()
    parallel.check_batch_size(pipeline.train.batch_size, mesh.size)  # before touching the workdir
    if not parallel.is_primary():
        progress, echo = False, _silent
    workdir = _prepare_workdir(Path(workdir), restart)
    resuming = checkpoint.has_checkpoints(workdir)
    # Every process must look before any creates the checkpoint folder (opening the manager
    # below does): one that looked after would open a manager more, and orbax's barriers
    # would no longer pair up across processes.
    parallel.sync("checkpoints looked for")
    if resuming:
        _check_compatible(workdir, pipeline)  # before anything in the workdir changes
    with PreemptionGuard() as guard:
        manager = checkpoint.open_manager(workdir, pipeline.checkpoint)
        try:
            return _train(pipeline, workdir, manager, mesh, guard, mnist_dir, progress, echo,
                          started)
        finally:
            checkpoint.close(manager)


def _prepare_workdir(workdir: Path, restart: bool) -> Path:
    if parallel.is_primary():
        _clean_workdir(workdir, restart)
    parallel.sync("workdir prepared")
    return workdir


def _clean_workdir(workdir: Path, restart: bool) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise CheckpointError(f"workdir {workdir} is a file, not a folder; "
                              "choose another with --workdir")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if restart:
            shutil.rmtree(checkpoint.checkpoint_dir(workdir), ignore_errors=True)
            shutil.rmtree(checkpoint.unreadable_dir(workdir), ignore_errors=True)
            for name in (MANIFEST, METRICS):
                (workdir / name).unlink(missing_ok=True)
            remove_event_files(workdir)
        probe = workdir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"workdir {workdir} is not writable ({e.strerror}); "
                              "choose another with --workdir") from None


def _train(pipeline: Pipeline, workdir: Path, manager: Any, mesh: Mesh, guard: PreemptionGuard,
           mnist_dir: str | None, progress: bool, echo: Callable[[str], None],
           started: float) -> dict[str, Any]:
    primary = parallel.is_primary()
    with parallel.primary_first("MNIST loaded"):  # prepares a shared data dir only once
        data = load_mnist(pipeline.data, mnist_dir)
    state = parallel.replicate(init_train_state(pipeline), mesh)
    epoch_sums = {"loss_sum": 0.0, "correct": 0}
    # Onto this run's devices, whatever the devices that saved it.
    resumed = checkpoint.restore_newest_intact(manager, state, warn=echo)
    if resumed is None:
        if primary:
            write_json_atomic(workdir / MANIFEST, build_manifest(pipeline, data.checksums))
    else:
        latest, state, meta = resumed
        epoch_sums = meta["epoch_sums"]
        echo(f"resuming {workdir} from step {latest} (epoch {meta['epoch']:.2f})")
    start_step = int(state["step"])
    if start_step == pipeline.total_steps:
        echo(f"{workdir} is already trained ({start_step} steps); pass --restart to train again")
    scalars = ScalarWriter(workdir, start_step)  # creates its file on the first write
    if primary:
        truncate_metrics(workdir, start_step)

    spe, batch = pipeline.steps_per_epoch, pipeline.train.batch_size
    images, labels = parallel.replicate((data.train_images, data.train_labels), mesh)
    splits = {name: parallel.replicate((x, y), mesh) for name, x, y in
              (("val", data.val_images, data.val_labels),
               ("test", data.test_images, data.test_labels))}
    train_chunk, evaluate = make_train_chunk(pipeline, mesh), make_evaluate(pipeline)
    compiled: dict[int, Any] = {}
    record: dict[str, Any] = {}
    pending: list[dict[str, jax.Array]] = []

    bar = tqdm(total=pipeline.total_steps, initial=start_step, unit="step", disable=not progress,
               dynamic_ncols=True, leave=False)
    log = bar.write if progress else echo
    epoch_started, epoch_steps = time.perf_counter(), 0
    for first, num_steps in chunk_plan(pipeline, start_step):
        if num_steps not in compiled:  # compile outside the epoch timer, once per length
            compile_started = time.perf_counter()
            compiled[num_steps] = train_chunk.lower(state, images, labels,
                                                    num_steps=num_steps).compile()
            epoch_started += time.perf_counter() - compile_started
        state, sums = compiled[num_steps](state, images, labels)
        pending.append(sums)  # stays on the device until the next sync point
        end, epoch_steps = first + num_steps, epoch_steps + num_steps
        # Alone, a signal stops us at the end of any chunk; several processes only stop
        # together, at the epoch ends and checkpoints where they all sync anyway.
        signalled = guard.signum is not None and jax.process_count() == 1
        if end % spe != 0 and not _is_step_save(pipeline, end) and not signalled:
            continue
        synced = jax.device_get(pending)  # waits for the chunk: a sync point
        _check_finite(synced, pipeline, manager)  # before anything is saved
        for sums in synced:
            epoch_sums = _add_sums(epoch_sums, sums)
        pending = []
        # Read after the sync, once: a signal that arrived while the chunk ran stops us here;
        # one that arrives from now on stops us at the next chunk's end.
        stopping = parallel.any_process(guard.signum is not None) and \
            end < pipeline.total_steps
        stop_signal = guard.signum or signal.SIGTERM  # or the signal another process got
        if end % spe != 0:  # a mid-epoch checkpoint
            checkpoint.save(manager, state, _meta(pipeline, end, epoch_sums))
            bar.update(end - bar.n)
            if stopping:
                raise Preempted(stop_signal, end)  # the caller waits for the save
            continue

        epoch_seconds = time.perf_counter() - epoch_started
        epoch = end // spe
        record = {"epoch": epoch, "step": end,  # averaged over models when K > 1
                  "train_loss": float(np.mean(epoch_sums["loss_sum"]) / spe),
                  "train_accuracy": float(np.mean(epoch_sums["correct"]) / (spe * batch))}
        if epoch % pipeline.train.eval_every_epochs == 0 or end == pipeline.total_steps:
            for name, (x, y) in splits.items():
                result = jax.device_get(evaluate(state["params"], x, y))
                record |= {f"{name}_{key}": value.tolist() for key, value in result.items()}
        models_examples = epoch_steps * batch * pipeline.train.num_models  # each model's count
        record |= {"epoch_seconds": epoch_seconds,
                   "examples_per_second": models_examples / epoch_seconds,
                   "wall_seconds": time.perf_counter() - started}
        epoch_sums = {"loss_sum": 0.0, "correct": 0}
        # The record before the checkpoint: a checkpoint never exists without its epoch's record
        # (a record without its checkpoint is dropped by `truncate_metrics` on resume).
        if primary:
            append_metrics(workdir, record)
            scalars.write(record)
        if pipeline.checkpoint.every_epoch or end == pipeline.total_steps or \
                _is_step_save(pipeline, end) or stopping:
            metrics = ({checkpoint.BEST_METRIC: record[checkpoint.BEST_METRIC]}
                       if checkpoint.BEST_METRIC in record else None)
            checkpoint.save(manager, state, _meta(pipeline, end, epoch_sums), metrics)
        bar.update(end - bar.n)
        log(format_record(record, pipeline.train.epochs))
        if stopping:
            raise Preempted(stop_signal, end)
        epoch_started, epoch_steps = time.perf_counter(), 0
    bar.close()
    scalars.close()
    manager.wait_until_finished()
    prints = fingerprints(pipeline, state["params"])
    echo(f"done: step {int(state['step'])}, params_sha256 {prints['params_sha256']}, "
         f"{time.perf_counter() - started:.1f} s")
    return record | prints | {"step": int(state["step"])}


def _check_finite(synced: list[dict[str, np.ndarray]], pipeline: Pipeline,
                  manager: Any) -> None:
    """Stop at the first NaN/inf loss with the step, the likely cause and the fix.

    Called before the state is saved, so the newest checkpoint is the last good one.
    """
    bad = [int(step) for sums in synced for step in np.ravel(sums["diverged_at"]) if step >= 0]
    if not bad:
        return
    step, opt = min(bad), pipeline.optimizer
    kept = manager.latest_step()
    raise DivergenceError(
        f"training diverged: the loss became NaN or infinite at step {step} (epoch "
        f"{(step - 1) // pipeline.steps_per_epoch + 1}); the likely cause is a learning rate "
        f"too high for {opt.name} ({opt.learning_rate:g}): lower it, e.g. --set "
        f"optimizer.learning_rate={opt.learning_rate / 10:g}, and train again with --restart; "
        + (f"the last good checkpoint, step {kept}, is kept" if kept is not None
           else "no checkpoint had been written"))


def _add_sums(total: dict[str, Any], chunk: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accumulate a chunk's metric sums (one per model when K > 1) as JSON-ready numbers.

    The host adds in float64/int64, as before K models, so a resumed epoch logs the same.
    """
    added = {}
    for key, value in total.items():
        value = np.asarray(value)
        added[key] = (value + np.asarray(chunk[key]).astype(value.dtype)).tolist()
    return added


def fingerprints(pipeline: Pipeline, params: Any) -> dict[str, Any]:
    """The run's params_sha256; for K models also each model's own."""
    result: dict[str, Any] = {"params_sha256": params_sha256(params)}
    if pipeline.train.num_models > 1:
        result["model_params_sha256"] = [params_sha256(model_params(params, k))
                                         for k in range(pipeline.train.num_models)]
    return result


def _silent(_: str) -> None:
    """The echo of processes other than 0: one log per run, not one per process."""


def _is_step_save(pipeline: Pipeline, step: int) -> bool:
    every = pipeline.checkpoint.every_steps
    return bool(every) and step % every == 0


def _meta(pipeline: Pipeline, step: int, epoch_sums: dict[str, Any]) -> dict[str, Any]:
    """JSON saved beside the state; `epoch_sums` lets a mid-epoch resume log exact metrics."""
    return {"epoch": step / pipeline.steps_per_epoch, "pipeline_sha256": pipeline_sha256(pipeline),
            "epoch_sums": epoch_sums}


def format_record(record: dict[str, Any], epochs: int) -> str:
    """One line per epoch: `loss accuracy` for train, validation and test, then speed."""
    parts = [f"epoch {record['epoch']:>3}/{epochs}  step {record['step']:>6}"]
    for name in ("train", "val", "test"):
        if f"{name}_accuracy" in record:
            parts.append(f"{name} {record[f'{name}_loss']:.4f} "
                         f"{100 * record[f'{name}_accuracy']:.2f}%")
        if f"{name}_model_accuracies" in record:
            parts.append(format_spread(record, name))
    parts.append(f"{record['epoch_seconds']:.2f} s  {record['examples_per_second']:,.0f} ex/s")
    return " | ".join(parts)


def format_spread(record: dict[str, Any], split: str) -> str:
    """How K models compare: `(ensemble; models 97.71-97.93%, sd 0.08%)`."""
    accuracies = record[f"{split}_model_accuracies"]
    return (f"(ensemble; models {100 * min(accuracies):.2f}-{100 * max(accuracies):.2f}%, "
            f"sd {100 * record[f'{split}_model_accuracy_sd']:.2f}%)")


def pipeline_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every result-affecting key that differs between two pipelines."""
    return differences(old, new, ignore=RESULT_NEUTRAL)


def _check_compatible(workdir: Path, pipeline: Pipeline) -> None:
    # Round-tripped so that keys added since the manifest was written compare as defaults.
    recorded = pipeline_to_dict(pipeline_from_dict(read_manifest(workdir)["pipeline"],
                                                   source=str(workdir)))
    diffs = pipeline_differences(recorded, pipeline_to_dict(pipeline))
    if diffs:
        raise CheckpointError(
            f"{workdir} holds checkpoints of a different pipeline ({'; '.join(diffs)}); "
            "pass --restart to start over there, or choose another --workdir")


def load_trained(workdir: str | Path, which: str = "latest") -> Trained:
    """Restore a workdir's checkpoint (`latest`, `best` or a step) with its pipeline."""
    workdir = Path(workdir)
    pipeline = pipeline_from_dict(read_manifest(workdir)["pipeline"], source=str(workdir))
    manager = checkpoint.open_manager(workdir, pipeline.checkpoint, read_only=True)
    try:
        step = checkpoint.resolve_step(manager, which)
        try:
            state, meta = checkpoint.restore(manager, step, init_train_state(pipeline))
        except CheckpointError as e:
            others = sorted(set(manager.all_steps()) - {step})
            raise CheckpointError(f"{e}; choose another with --checkpoint (saved steps: {others})"
                                  if others else f"{e}; retrain with --restart") from None
    finally:
        manager.close()
    return Trained(pipeline=pipeline, state=state, meta=meta, step=step)

