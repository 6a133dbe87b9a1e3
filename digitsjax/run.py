"""A run: train a pipeline into a workdir (resuming what is there), and load what it left.

This is the only module that touches the filesystem during training; `train.py` stays pure.
The loop dispatches compiled chunks without waiting, and synchronises with the device once
per epoch (metrics, evaluation) and at checkpoints.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from digitsjax import checkpoint
from digitsjax.config import Pipeline, pipeline_from_dict, pipeline_sha256, pipeline_to_dict
from digitsjax.data import MNIST, load_mnist, resolve_mnist_dir
from digitsjax.errors import CheckpointError
from digitsjax.model import params_sha256
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
    """Train into `workdir`, continuing from its latest checkpoint; return the final record."""
    started = time.perf_counter()
    workdir = _prepare_workdir(Path(workdir), restart)
    manager = checkpoint.open_manager(workdir, pipeline.checkpoint)
    try:
        return _train(pipeline, workdir, manager, mnist_dir, progress, echo, started)
    finally:
        manager.wait_until_finished()
        manager.close()


def _prepare_workdir(workdir: Path, restart: bool) -> Path:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        if restart:
            shutil.rmtree(checkpoint.checkpoint_dir(workdir), ignore_errors=True)
            for name in (MANIFEST, METRICS):
                (workdir / name).unlink(missing_ok=True)
        probe = workdir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"workdir {workdir} is not writable ({e.strerror}); "
                              "choose another with --workdir") from None
    return workdir


def _train(pipeline: Pipeline, workdir: Path, manager: Any, mnist_dir: str | None,
           progress: bool, echo: Callable[[str], None], started: float) -> dict[str, Any]:
    latest = manager.latest_step()
    if latest is not None:
        _check_compatible(workdir, pipeline)
    data = load_mnist(pipeline.data, resolve_mnist_dir(mnist_dir, pipeline.data))
    state = init_train_state(pipeline)
    epoch_sums = {"loss_sum": 0.0, "correct": 0}
    if latest is None:
        write_json_atomic(workdir / MANIFEST, build_manifest(pipeline, data.checksums))
    else:
        state, meta = checkpoint.restore(manager, latest, state)
        epoch_sums = meta["epoch_sums"]
        echo(f"resuming {workdir} from step {latest} (epoch {meta['epoch']:.2f})")
    start_step = int(state["step"])
    truncate_metrics(workdir, start_step)

    spe, batch = pipeline.steps_per_epoch, pipeline.train.batch_size
    images, labels = jax.device_put(data.train_images), jax.device_put(data.train_labels)
    splits = {name: (jax.device_put(x), jax.device_put(y)) for name, x, y in
              (("val", data.val_images, data.val_labels),
               ("test", data.test_images, data.test_labels))}
    train_chunk, evaluate = make_train_chunk(pipeline), make_evaluate(pipeline)
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
        if end % spe != 0 and not _is_step_save(pipeline, end):
            continue
        for sums in jax.device_get(pending):
            epoch_sums = _add_sums(epoch_sums, sums)
        pending = []
        if end % spe != 0:  # a mid-epoch checkpoint
            checkpoint.save(manager, state, _meta(pipeline, end, epoch_sums))
            bar.update(end - bar.n)
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
        if pipeline.checkpoint.every_epoch or end == pipeline.total_steps or \
                _is_step_save(pipeline, end):
            metrics = ({checkpoint.BEST_METRIC: record[checkpoint.BEST_METRIC]}
                       if checkpoint.BEST_METRIC in record else None)
            checkpoint.save(manager, state, _meta(pipeline, end, epoch_sums), metrics)
        append_metrics(workdir, record)
        bar.update(end - bar.n)
        log(format_record(record, pipeline.train.epochs))
        epoch_started, epoch_steps = time.perf_counter(), 0
    bar.close()
    manager.wait_until_finished()
    fingerprints = _fingerprints(pipeline, state["params"])
    echo(f"done: step {int(state['step'])}, params_sha256 {fingerprints['params_sha256']}, "
         f"{time.perf_counter() - started:.1f} s")
    return record | fingerprints | {"step": int(state["step"])}


def _add_sums(total: dict[str, Any], chunk: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accumulate a chunk's metric sums (one per model when K > 1) as JSON-ready numbers.

    The host adds in float64/int64, as before K models, so a resumed epoch logs the same.
    """
    added = {}
    for key, value in total.items():
        value = np.asarray(value)
        added[key] = (value + np.asarray(chunk[key]).astype(value.dtype)).tolist()
    return added


def _fingerprints(pipeline: Pipeline, params: Any) -> dict[str, Any]:
    """The run's params_sha256; for K models also each model's own."""
    result: dict[str, Any] = {"params_sha256": params_sha256(params)}
    if pipeline.train.num_models > 1:
        result["model_params_sha256"] = [params_sha256(model_params(params, k))
                                         for k in range(pipeline.train.num_models)]
    return result


def _is_step_save(pipeline: Pipeline, step: int) -> bool:
    every = pipeline.checkpoint.every_steps
    return bool(every) and step % every == 0


def _meta(pipeline: Pipeline, step: int, epoch_sums: dict[str, Any]) -> dict[str, Any]:
    """JSON saved beside the state; `epoch_sums` lets a mid-epoch resume log exact metrics."""
    return {"epoch": step / pipeline.steps_per_epoch, "pipeline_sha256": pipeline_sha256(pipeline),
            "epoch_sums": epoch_sums}


def format_record(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']:>3}/{epochs}", f"step {record['step']:>6}",
             f"train_loss {record['train_loss']:.4f}"]
    for name in ("val", "test"):
        if f"{name}_accuracy" in record:
            parts.append(f"{name}_acc {100 * record[f'{name}_accuracy']:.2f}%")
        if f"{name}_model_accuracies" in record:
            parts.append(format_spread(record, name))
    parts.append(f"{record['epoch_seconds']:.2f} s")
    parts.append(f"{record['examples_per_second']:,.0f} ex/s")
    return "  ".join(parts)


def format_spread(record: dict[str, Any], split: str) -> str:
    """How K models compare: `(ensemble; models 97.71-97.93%, sd 0.08%)`."""
    accuracies = record[f"{split}_model_accuracies"]
    return (f"(ensemble; models {100 * min(accuracies):.2f}-{100 * max(accuracies):.2f}%, "
            f"sd {100 * record[f'{split}_model_accuracy_sd']:.2f}%)")


def pipeline_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for every result-affecting key that differs between two pipelines."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if any(path == n or path.startswith(n) for n in RESULT_NEUTRAL if n):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += pipeline_differences(a, b, f"{path}.")
        elif a != b:
            diffs.append(f"{path}: {a!r} -> {b!r}")
    return diffs


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
        state, meta = checkpoint.restore(manager, step, init_train_state(pipeline))
    finally:
        manager.close()
    return Trained(pipeline=pipeline, state=state, meta=meta, step=step)


def evaluate_trained(trained: Trained, data: MNIST) -> dict[str, Any]:
    """Test loss and accuracy of a restored checkpoint, with its fingerprint.

    For K models: the ensemble's accuracy, each model's, and each model's fingerprint.
    """
    evaluate = make_evaluate(trained.pipeline)
    result = jax.device_get(evaluate(trained.state["params"], data.test_images, data.test_labels))
    return ({"step": trained.step} |
            {f"test_{key}": value.tolist() for key, value in result.items()} |
            _fingerprints(trained.pipeline, trained.state["params"]))
