"""A run: train a pipeline into a workdir, continuing from what is there.

The training path, top to bottom: prepare the workdir, load MNIST, restore the newest intact
checkpoint or start from step 0, then dispatch compiled chunks of steps (core/train.py). The
loop does not wait for the device between chunks: it synchronises once per epoch (metrics,
evaluation) and at checkpoints. A SIGTERM or SIGINT makes the end of the current chunk a
checkpoint, after which the run stops with `Preempted` (see preemption.py).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from digitsjax.core import sharding
from digitsjax.core.config import Pipeline, pipeline_sha256
from digitsjax.core.data import MNIST
from digitsjax.core.placement import Placement, placement_for, unpad_models
from digitsjax.core.program import (
    Program,
    init_state,
    join_models,
    join_sums,
    make_train_chunk,
    program_of,
    split_models,
)
from digitsjax.core.train import TrainState, chunk_plan, make_evaluate
from digitsjax.errors import RESTART, DivergenceError, render, setting
from digitsjax.run import backend, checkpoint, cluster, process
from digitsjax.run.mnist import load_mnist
from digitsjax.run.preemption import Preempted, PreemptionGuard
from digitsjax.run.records import (
    MODEL_DIVERGED_AT,
    TRAIN_MODEL_ACCURACIES,
    TRAIN_MODEL_LOSSES,
    VAL_MODEL_ACCURACIES,
    EpochRecord,
    RecordWriter,
    best_evaluated,
    format_best,
    last_evaluated,
    read_metrics,
)
from digitsjax.run.resources import check_memory
from digitsjax.run.trained import fingerprints
from digitsjax.run.workdir import (
    Workdir,
    build_manifest,
    check_compatible,
    prepared_workdir,
)

EpochSums = dict[str, Any]
"""A partial epoch's metric sums, {"loss_sum", "correct"}: saved with mid-epoch checkpoints."""


def train_pipeline(pipeline: Pipeline, workdir: str | Path, **options: Any) -> dict[str, Any]:
    """Train a pipeline's own program (its `train.num_models` seeds): see `train_program`."""
    return train_program(program_of(pipeline), workdir, **options)


def train_program(program: Program, workdir: str | Path, *, mnist_dir: str | None = None,
                  restart: bool = False, progress: bool = False,
                  echo: Callable[[str], None] | None = None,
                  after: float = 0.0, stop_epoch: int | None = None,
                  start: Callable[[Program], TrainState] | None = None) -> dict[str, Any]:
    """Train into `workdir`, continuing from its newest intact checkpoint; return the final record.

    A sweep's program trains grid points, each with its own values of the per-model keys; one
    whose loss turns NaN/inf stops alone.

    Uses every device of every process (call `cluster.initialize` first to join several);
    all processes run this together, and only process 0 writes files other than checkpoints.
    On SIGTERM/SIGINT the current chunk finishes and is checkpointed, and `Preempted` is raised
    once that checkpoint is complete.

    `after`: the work a sweep has left after this program, in this program's epochs, so that
    its epoch lines say the sweep's time left too.

    `stop_epoch` ends this run at that epoch (evaluated and checkpointed) rather than at
    `train.epochs`, which still sets the schedule: a stage of successive halving or
    population-based training (apps/sweep.py).
    `start(program)` gives the state a new workdir starts from, instead of step 0's: the state
    the stage's points reached in the stage before.

    `echo` takes each line of progress. A line may name a remedy by its marker
    (`errors.RESTART`), which the caller spells its own way (`errors.render`); without an
    `echo`, lines are printed with remedies spelled for Python callers.
    """
    started, pipeline = time.perf_counter(), program.pipeline
    echo = echo or (lambda line: print(render(line)))
    process.quiet_libraries()
    backend.request_determinism(pipeline.train.deterministic)  # before JAX starts its backend
    placement = placement_for(program.num_models, jax.device_count())
    mesh = sharding.program_mesh(placement)
    # What can be refused up front is refused before the workdir is touched.
    sharding.check_batch_size(pipeline.train.batch_size, placement.data_shards)
    check_memory(program, mesh)
    if not cluster.is_primary():
        progress, echo = False, cluster.silent
    echo(backend.summary_line(backend.describe(pipeline), placement))
    with cluster.primary_first("MNIST loaded"):  # prepares a shared data dir only once
        data = load_mnist(pipeline.data, mnist_dir)
    with prepared_workdir(Path(workdir), restart, echo) as workdir, PreemptionGuard() as guard:
        resuming = checkpoint.has_checkpoints(workdir.path)
        # Every process must look before any creates the checkpoint folder (opening the
        # manager below does): one that looked after would open a manager more, and orbax's
        # barriers would no longer pair up across processes.
        cluster.sync("checkpoints looked for")
        if resuming:  # before anything in the workdir changes
            check_compatible(workdir, program)
        manager = checkpoint.open_manager(workdir.path, pipeline.checkpoint)
        try:
            run = _Run(program, workdir, manager, guard, mesh, placement, echo, started, after,
                       stop_epoch or pipeline.train.epochs)
            state, sums = _restore_or_init(run, data, start)
            return _train(run, state, sums, data, progress)
        finally:
            checkpoint.close(manager)


@dataclass
class _Run:
    """What every part of one training run shares (the mutable train state is passed apart)."""

    program: Program
    workdir: Workdir
    """Replaced by the updated one whenever the run writes its manifest."""
    manager: Any
    guard: PreemptionGuard
    mesh: Mesh
    placement: Placement
    echo: Callable[[str], None]
    started: float
    after: float = 0.0
    """A sweep's work after this program, in this program's epochs (`train_program`)."""
    stop_epoch: int = 0
    """Where this run ends: `train.epochs`, or the end of a sweep's stage before it."""
    primary: bool = field(default_factory=cluster.is_primary)

    @property
    def pipeline(self) -> Pipeline:
        return self.program.pipeline

    @property
    def stop_step(self) -> int:
        return self.stop_epoch * self.pipeline.steps_per_epoch


def _restore_or_init(run: _Run, data: MNIST, start: Callable[[Program], TrainState] | None
                     ) -> tuple[TrainState, EpochSums]:
    """The newest intact checkpoint's state, or step 0's (or `start`'s), and the manifest of a
    new run, as the chunks take it (`_placed`)."""
    like = _restore_target(run, init_state(run.program))
    # Onto this run's devices, whatever the devices that saved it.
    resumed = checkpoint.restore_newest_intact(run.manager, like, warn=run.echo)
    if resumed is None:
        state = like if start is None else _restore_target(run, start(run.program))
        if run.primary:
            run.workdir = run.workdir.write_manifest(build_manifest(
                run.program, data.checksums, run.placement, _stage(run, int(state.step))))
        return _placed(run, state), _no_sums()
    step, state, meta = resumed
    run.echo(f"resuming {run.workdir.path} from step {step} (epoch {meta['epoch']:.2f})")
    if run.primary and run.workdir.pipeline.train.epochs != run.pipeline.train.epochs:
        run.workdir = run.workdir.record_extension(run.program, step)
        run.echo(f"extended to {run.pipeline.train.epochs} epochs")
    return _placed(run, state), meta["epoch_sums"]


def _stage(run: _Run, step: int) -> tuple[int, int] | None:
    """The epochs a sweep's stage trains, (after, to); None for a whole run."""
    epochs = (step // run.pipeline.steps_per_epoch, run.stop_epoch)
    return None if epochs == (0, run.pipeline.train.epochs) else epochs


def _restore_target(run: _Run, state: TrainState) -> TrainState:
    """The K models' state on the mesh, as a checkpoint of any placement restores into it:
    split by model where the models split evenly, else whole on every device."""
    placement = run.placement
    if placement.split and not placement.idle:
        return sharding.place_models(state, run.mesh, placement)
    return sharding.replicate(state, run.mesh)


def _placed(run: _Run, state: TrainState) -> TrainState:
    """`_restore_target`'s state as the chunks take it: with the idle copies, if any."""
    if not (run.placement.split and run.placement.idle):
        return state
    return sharding.place_models(state, run.mesh, run.placement)


def _train(run: _Run, state: TrainState, epoch_sums: EpochSums, data: MNIST,
           progress: bool) -> dict[str, Any]:
    """The chunk loop: dispatch, and at each sync point check, record, save or stop."""
    pipeline, start = run.pipeline, int(state.step)
    if start >= run.stop_step:
        run.echo(f"{run.workdir.path} is already trained ({start} steps); "
                 f"pass {RESTART} to train again")
    bar = tqdm(total=run.stop_step, initial=start, unit="step", disable=not progress,
               dynamic_ncols=True, leave=False)
    writer = RecordWriter(run.workdir.path, start, pipeline.train.epochs, run.primary,
                          bar.write if progress else run.echo, run.after, run.stop_epoch)
    with contextlib.closing(_Chunks(run, data)) as chunks:
        record: dict[str, Any] = {}
        for first, num_steps in chunk_plan(pipeline, start, run.stop_step):
            state = chunks.run(state, num_steps)
            end = first + num_steps
            if not _is_sync_point(run, end):
                continue
            epoch_sums = _add_sums(epoch_sums, chunks.collect(run))
            stopping = cluster.any_process(run.guard.signum is not None) and \
                end < run.stop_step
            if end % pipeline.steps_per_epoch == 0:
                record = _end_epoch(run, chunks, state, end, epoch_sums, writer, stopping)
                epoch_sums = _no_sums()
                chunks.restart_clock()  # after evaluating and saving: not the next epoch's
            else:  # a mid-epoch checkpoint
                with chunks.off_the_clock():
                    checkpoint.save(run.manager, chunks.host(state),
                                    _meta(pipeline, end, epoch_sums))
            bar.update(end - bar.n)
            if stopping:
                raise Preempted(run.guard.signum or signal.SIGTERM, end)  # or another process's
    bar.close()
    writer.close()
    checkpoint.wait(run.manager)  # the last save: its failure is one error too
    prints = fingerprints(pipeline, chunks.host(state).params)
    run.echo(f"done: step {int(state.step)}, params_sha256 {prints['params_sha256']}, "
             f"{time.perf_counter() - run.started:.1f} s")
    if run.primary:
        run.workdir = run.workdir.record_result(
            int(state.step), prints["params_sha256"],
            prints.get("model_params_sha256") if run.program.is_sweep else None)
    _echo_best(run)
    return record | prints | {"step": int(state.step)}


class _Chunks:
    """The compiled chunk programs, their metric sums still on the device, and the epoch clock.

    A K-model run on one CPU device trains its models as two concurrent groups (`model_groups`):
    each chunk, the state is split by model, each group's program runs on a thread of its own,
    and the groups' states are joined again, so checkpoints, evaluation and records see one state.
    Models split over devices (`run.placement`) train in one program, their state split by model
    (`_placed`); `host` gathers the K models back for a checkpoint or a fingerprint.
    """

    def __init__(self, run: _Run, data: MNIST) -> None:
        self.images, self.labels = sharding.replicate((data.train_images, data.train_labels),
                                                      run.mesh)
        self.splits = {name: sharding.replicate((x, y), run.mesh) for name, x, y in
                       (("val", data.val_images, data.val_labels),
                        ("test", data.test_images, data.test_labels))}
        groups = run.program.groups(run.mesh.size)
        self.sizes = tuple(group.num_models for group in groups)
        self.placement = run.placement
        self.train_chunks = _group_chunks(groups, run.mesh, run.placement)
        self.pool = ThreadPoolExecutor(len(self.sizes)) if len(self.sizes) > 1 else None
        self.evaluate = make_evaluate(run.pipeline, out_shardings=sharding.replicated(run.mesh)
                                      if run.placement.split else None)
        self.compiled: dict[tuple[int, int], Any] = {}
        self.pending: list[dict[str, jax.Array]] = []
        self.epoch_started, self.epoch_steps = time.perf_counter(), 0

    def host(self, state: TrainState) -> TrainState:
        """The K models' state as a checkpoint and the fingerprints read it (on the host when
        split by model; as it is otherwise)."""
        if not self.placement.split:
            return state
        return sharding.host_models(state, self.placement)

    def diverged_at(self, state: TrainState) -> np.ndarray:
        """A sweep's step at which each of its K models stopped (-1: training)."""
        if not self.placement.split:
            return jax.device_get(state.diverged_at)
        return sharding.to_host(state.diverged_at)[:self.placement.models]

    def run(self, state: TrainState, num_steps: int) -> TrainState:
        """Dispatch one chunk (alone, without waiting for it; in groups, waiting for them)."""
        if self.pool is None:
            state, sums = self._compiled(0, state, num_steps)(state, self.images, self.labels)
        else:
            state, sums = self._run_groups(state, num_steps)
        self.pending.append(sums)  # stays on the device until the next sync point
        self.epoch_steps += num_steps
        return state

    def _run_groups(self, state: TrainState, num_steps: int) -> tuple[TrainState, dict]:
        """The chunk as each group's program, side by side, and their results joined."""
        parts = split_models(state, self.sizes)
        _release(state)  # as donating it to one program would
        programs = [self._compiled(g, part, num_steps) for g, part in enumerate(parts)]
        running = [self.pool.submit(self._finished, program, part)
                   for program, part in zip(programs, parts, strict=True)]
        states, sums = zip(*(future.result() for future in running), strict=True)
        return join_models(list(states)), join_sums(list(sums))

    def _compiled(self, group: int, state: TrainState, num_steps: int) -> Any:
        """Group `group`'s program for chunks of `num_steps`, compiled first (off the clock)."""
        chunk = self.train_chunks[group]
        if (id(chunk), num_steps) not in self.compiled:
            with self.off_the_clock():
                self.compiled[id(chunk), num_steps] = chunk.lower(
                    state, self.images, self.labels, num_steps=num_steps).compile()
        return self.compiled[id(chunk), num_steps]

    def _finished(self, program: Any, state: TrainState) -> tuple[TrainState, dict]:
        """Run a group's program to its end, on a thread of the pool (so the groups overlap)."""
        return jax.block_until_ready(program(state, self.images, self.labels))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def collect(self, run: _Run) -> list[dict[str, np.ndarray]]:
        """Wait for the dispatched chunks (a sync point) and check them before any save."""
        synced, self.pending = [self._sums(sums) for sums in self.pending], []
        if not run.program.is_sweep:  # a sweep's diverged models stop alone, in the program
            _check_finite(synced, run.pipeline, run.manager)
        return synced

    def _sums(self, sums: dict[str, jax.Array]) -> dict[str, np.ndarray]:
        """A chunk's metric sums on the host: the K models' (not the idle copies')."""
        if not self.placement.split:
            return jax.device_get(sums)
        return unpad_models(sharding.to_host(sums), self.placement)

    @contextlib.contextmanager
    def off_the_clock(self) -> Iterator[None]:
        """What runs in here (compiling, evaluating, saving) is not time of the epoch's steps."""
        paused = time.perf_counter()
        try:
            yield
        finally:
            self.epoch_started += time.perf_counter() - paused

    def clock(self) -> tuple[float, int]:
        """(seconds, steps) of the epoch so far."""
        return time.perf_counter() - self.epoch_started, self.epoch_steps

    def restart_clock(self) -> None:
        """The next epoch starts now."""
        self.epoch_started, self.epoch_steps = time.perf_counter(), 0


def _group_chunks(groups: tuple[Program, ...], mesh: Mesh, placement: Placement) -> list[Any]:
    """Each group's jitted chunk (groups of one size and data orders share one program)."""
    chunks: dict[tuple, Any] = {}
    for group in groups:
        shape = (group.num_models, group.data_orders())
        if shape not in chunks:
            chunks[shape] = make_train_chunk(group, mesh, placement=placement)
    return [chunks[group.num_models, group.data_orders()] for group in groups]


def _release(state: TrainState) -> None:
    """Free a split state's per-model arrays now: its groups hold copies of them."""
    for leaf in jax.tree.leaves(state.replace(step=None)):
        leaf.delete()


def _is_sync_point(run: _Run, end: int) -> bool:
    """Epoch ends and step checkpoints; alone, also any chunk's end once a signal came (several
    processes only stop together, at the epoch ends and checkpoints where they all sync)."""
    signalled = run.guard.signum is not None and jax.process_count() == 1
    return end % run.pipeline.steps_per_epoch == 0 or _is_step_save(run.pipeline, end) or \
        signalled


def _end_epoch(run: _Run, chunks: _Chunks, state: TrainState, end: int, epoch_sums: EpochSums,
               writer: RecordWriter, stopping: bool) -> EpochRecord:
    """Evaluate, record, checkpoint (the record first: a checkpoint never exists without its
    epoch's record; a record without its checkpoint is dropped on resume) and log."""
    pipeline = run.pipeline
    seconds, steps = chunks.clock()
    spe, batch = pipeline.steps_per_epoch, pipeline.train.batch_size
    record: dict[str, Any] = {  # averaged over models when K > 1
        "epoch": end // spe, "step": end,
        "train_loss": float(np.mean(epoch_sums["loss_sum"]) / spe),
        "train_accuracy": float(np.mean(epoch_sums["correct"]) / (spe * batch))}
    if record["epoch"] % pipeline.train.eval_every_epochs == 0 or end == run.stop_step:
        for name, (x, y) in chunks.splits.items():
            result = jax.device_get(chunks.evaluate(state.params, x, y))
            record |= {f"{name}_{key}": value.tolist() for key, value in result.items()}
    if run.program.is_sweep:
        record |= _per_model_fields(chunks.diverged_at(state), epoch_sums, spe, batch)
    record |= {"epoch_seconds": seconds,
               "examples_per_second": steps * batch * pipeline.train.num_models / seconds,
               "wall_seconds": time.perf_counter() - run.started}
    writer.write(record)
    if pipeline.checkpoint.every_epoch or end == run.stop_step or \
            _is_step_save(pipeline, end) or stopping:
        checkpoint.save(run.manager, chunks.host(state), _meta(pipeline, end, _no_sums()),
                        _best_metric(record, run.program))
    writer.log(record)
    return record


def _best_metric(record: EpochRecord, program: Program) -> dict[str, float] | None:
    """What `checkpoint.keep_best` ranks the epoch by: its validation accuracy (for K seeds,
    their ensemble's); for a sweep's program, its points' mean, as an ensemble of models
    trained with different numbers is nobody's network."""
    if checkpoint.BEST_METRIC not in record:
        return None
    value = float(np.mean(record[VAL_MODEL_ACCURACIES])) if program.is_sweep else \
        record[checkpoint.BEST_METRIC]
    return {checkpoint.BEST_METRIC: value}


def _per_model_fields(diverged_at: np.ndarray, epoch_sums: EpochSums, spe: int,
                      batch: int) -> dict[str, Any]:
    """A sweep's models each train with their own numbers: their own training metrics, and the
    step at which each stopped on a NaN/inf (-1: training)."""
    return {TRAIN_MODEL_LOSSES: (np.asarray(epoch_sums["loss_sum"]) / spe).tolist(),
            TRAIN_MODEL_ACCURACIES: (np.asarray(epoch_sums["correct"]) / (spe * batch)).tolist(),
            MODEL_DIVERGED_AT: np.asarray(diverged_at).tolist()}


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
        f"too high for {opt.name} ({opt.learning_rate:g})",
        f"lower it, e.g. {setting('optimizer.learning_rate', f'{opt.learning_rate / 10:g}')}, "
        f"and train again with {RESTART}; "
        + (f"the last good checkpoint, step {kept}, is kept" if kept is not None
           else "no checkpoint had been written"))


def _no_sums() -> EpochSums:
    return {"loss_sum": 0.0, "correct": 0}


def _add_sums(total: EpochSums, chunks: list[dict[str, np.ndarray]]) -> EpochSums:
    """Accumulate chunks' metric sums (one per model when K > 1) as JSON-ready numbers.

    The host adds in float64/int64, for 1 or K models alike, so a resumed epoch logs the same.
    """
    for chunk in chunks:
        added = {}
        for key, value in total.items():
            value = np.asarray(value)
            added[key] = (value + np.asarray(chunk[key]).astype(value.dtype)).tolist()
        total = added
    return total


def _echo_best(run: _Run) -> None:
    """The best epoch by validation beside the last: what `checkpoint.keep_best` kept (not for
    a sweep's program: the sweep names its best point)."""
    records = read_metrics(run.workdir.path) if run.primary and not run.program.is_sweep else []
    best, last = best_evaluated(records), last_evaluated(records)
    if best is not None and last is not None and "val_accuracy" in last:
        run.echo(format_best(best, last, run.pipeline.checkpoint.keep_best))


def _is_step_save(pipeline: Pipeline, step: int) -> bool:
    every = pipeline.checkpoint.every_steps
    return bool(every) and step % every == 0


def _meta(pipeline: Pipeline, step: int, epoch_sums: EpochSums) -> dict[str, Any]:
    """JSON saved beside the state; `epoch_sums` lets a mid-epoch resume log exact metrics."""
    return {"epoch": step / pipeline.steps_per_epoch, "pipeline_sha256": pipeline_sha256(pipeline),
            "epoch_sums": epoch_sums}
