"""Orbax checkpoints of the train state, under `WORKDIR/checkpoints/<step>/`.

Each checkpoint is a composite of two items: `state` (params, optimizer state, step, root key:
everything the next step depends on) and `meta` (JSON: epoch, pipeline fingerprint, metrics,
and a sha256 checksum of the state's bytes). Orbax writes each step into a temporary directory and
renames it when complete, so a killed save leaves only debris that the next writable manager
removes. A finished checkpoint can still be damaged later (a truncated copy, a disk that lost
its cache): the checksum catches that, and a resume falls back to the newest intact one.

Orbax writes the files of a checkpoint itself; what it writes is listed in the workdir's ledger
(`files.OwnedFolder`, by process 0): `checkpoints/` before the manager creates it, each step's
folder before its save starts, and the step's files once the save is finished (`record_saved`,
at the next save and at the end), so that a restart deletes what orbax wrote and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from digitsjax.core import sharding
from digitsjax.core.config import CheckpointConfig
from digitsjax.core.model import params_sha256
from digitsjax.core.train import TrainState
from digitsjax.errors import CHECKPOINT, RESTART, WORKDIR, CheckpointError, FileError
from digitsjax.files import OwnedFolder
from digitsjax.run import cluster

CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints-unreadable"  # where damaged checkpoints are moved, never deleted
BEST_METRIC = "val_accuracy"
STATE_SHA256 = "state_sha256"
STATE_BLOCKS_SHA256 = "state_blocks_sha256"
_ORBAX_SOURCE = f"{os.sep}orbax{os.sep}"


def checkpoint_dir(workdir: Path) -> Path:
    return Path(workdir).absolute() / CHECKPOINT_DIR


def unreadable_dir(workdir: Path) -> Path:
    return Path(workdir).absolute() / UNREADABLE_DIR


def state_sha256(state: dict[str, Any]) -> str:
    """The bytes of every leaf of the train state, hashed as `params_sha256` hashes params: the
    checksum a checkpoint's meta may hold under STATE_SHA256 instead of STATE_BLOCKS_SHA256,
    checked on restore like the other."""
    return params_sha256(state)


HASH_BLOCK_BYTES = 1 << 26


def state_blocks_sha256(state: dict[str, Any]) -> str:
    """The sha256 of the sha256s of the state's bytes, leaf by leaf in pytree order, in blocks
    of `HASH_BLOCK_BYTES` (a leaf starts a block).

    It proves every byte as one sha256 over them does, but its blocks are hashed on every core
    at once (hashlib releases the GIL): one sha256 would read a large state (a sweep's many
    models) on one core at each save, and again at each restore (docs/performance.md,
    "Checksums of large states").
    """
    views = [memoryview(np.ascontiguousarray(leaf)).cast("B") for leaf in jax.tree.leaves(state)]
    blocks = [view[start:start + HASH_BLOCK_BYTES] for view in views
              for start in range(0, max(len(view), 1), HASH_BLOCK_BYTES)]
    with ThreadPoolExecutor(max_workers=min(len(blocks), os.cpu_count() or 1)) as pool:
        digests = pool.map(lambda block: hashlib.sha256(block).digest(), blocks)
        return hashlib.sha256(b"".join(digests)).hexdigest()


def _intact(state: dict[str, Any], meta: Any) -> bool:
    """Whether `state` has the bytes whose checksum `meta` holds (either kind)."""
    if not isinstance(meta, dict):
        return False
    if STATE_BLOCKS_SHA256 in meta:
        return state_blocks_sha256(state) == meta[STATE_BLOCKS_SHA256]
    return STATE_SHA256 in meta and state_sha256(state) == meta[STATE_SHA256]


def has_checkpoints(workdir: Path) -> bool:
    """Whether `workdir` holds a finished checkpoint; reads only, so it changes nothing."""
    if not checkpoint_dir(workdir).is_dir():
        return False
    manager = open_manager(workdir, read_only=True)
    try:
        return bool(manager.all_steps())
    finally:
        manager.close()


def wait(manager: ocp.CheckpointManager) -> None:
    """Wait for the save in flight; a failure to write it (a full disk) is one CheckpointError."""
    with _storage_errors(manager):
        manager.wait_until_finished()


def close(manager: ocp.CheckpointManager) -> None:
    """Wait for the save in flight (on every exit path, errors included), list its files, and
    release."""
    with _storage_errors(manager):
        try:
            manager.wait_until_finished()
            if cluster.is_primary():
                with contextlib.suppress(FileError, OSError):  # the next run lists them
                    record_saved(Path(manager.directory).parent)
        finally:
            manager.close()


STEP_TMP = re.compile(r"(\d+)\.orbax-checkpoint-tmp(-\d+)?")
"""The folder of a save under way: orbax renames it to the bare step once it is complete."""
_ITEMS = "(state|meta|metrics)"  # the items of a checkpoint: save's two, and orbax's metrics
_ITEM_FILES = (r"_[A-Za-z_]+", r"commit_success\.txt", "metadata", "metrics",
               r"manifest\.ocdbt", r"(ocdbt\.process_\d+/)?d/([0-9a-f]+)?",
               r"ocdbt\.process_\d+/(manifest\.ocdbt)?", r"descriptor/([\w.-]+)?",
               r"array_metadatas/(process_\d+)?")
_ORBAX_FILES = re.compile(rf"_[A-Z_]+|commit_success\.txt|{_ITEMS}/({'|'.join(_ITEM_FILES)})?")
"""What orbax writes in a step's folder (relative to it; a folder's name ends in "/")."""


def written_by_orbax(entry: str, written: frozenset[str] | set[str]) -> bool:
    """Whether `entry` of a workdir (as its ledger spells names) is orbax's, given the ledger's
    `written` entries: a file of orbax's layout in a listed step folder, or an unfinished
    save's folder (and anything in it) of a listed step."""
    top, step, rest = [*entry.split("/", 2), "", ""][:3]
    if top not in (CHECKPOINT_DIR, UNREADABLE_DIR) or not step:
        return False
    unfinished = STEP_TMP.fullmatch(step)
    if unfinished and top == CHECKPOINT_DIR:
        return f"{top}/{step}/" in written or f"{top}/{unfinished[1]}/" in written
    return bool(rest) and f"{top}/{step}/" in written and bool(_ORBAX_FILES.fullmatch(rest))


def record_saved(workdir: Path) -> None:
    """List the files orbax wrote in the workdir's listed step folders (finished saves, and
    steps moved aside) that its ledger does not list yet; a file of anyone else's in them
    stays unlisted."""
    files = OwnedFolder(Path(workdir))
    written = files.written()
    files.record(*(entry for entry in files.strangers([CHECKPOINT_DIR, UNREADABLE_DIR])
                   if written_by_orbax(entry, written)))


@contextlib.contextmanager
def _storage_errors(manager: ocp.CheckpointManager) -> Iterator[None]:
    """A write that failed (disk full, read-only or vanished filesystem) -> one clear line.

    Orbax reports an async save's failure at the next save or wait, as tensorstore's
    ValueError or an OSError. The step being written never reaches its final name, so the
    earlier checkpoints stand, and the error lists them.
    """
    try:
        yield
    except (OSError, ValueError) as e:
        text = str(e)
        if not isinstance(e, OSError) and not any(
                mark in text for mark in ("os_error_code", "RESOURCE_EXHAUSTED")):
            raise  # not the filesystem: a bug, which should stay loud
        reason = next((r for r in _STORAGE_REASONS if r in text), text.splitlines()[0][:200])
        raise _cannot_write(manager, reason) from None


def _cannot_write(manager: ocp.CheckpointManager, reason: str) -> CheckpointError:
    intact = sorted(manager.all_steps(read=True))
    return CheckpointError(
        f"could not write a checkpoint in {manager.directory} ({reason}); the checkpoints "
        f"{intact or 'written before'} are intact", "free space or make the workdir writable, "
        "then run the same command again to continue")


def _check_room(manager: ocp.CheckpointManager, state: dict[str, Any]) -> None:
    """Refuse a save that cannot fit before orbax starts it: a save that fails half-written
    is reported by tensorstore's callbacks at length, long after the fact."""
    directory = Path(manager.directory)
    if not os.access(directory, os.W_OK):  # a read-only filesystem fails this even for root
        raise _cannot_write(manager, "the workdir is not writable")
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + 2**18  # + metadata
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise _cannot_write(manager, f"No space left on device: {free / 2**20:.1f} MiB free, "
                                     f"a checkpoint needs about {needed / 2**20:.1f} MiB")


_STORAGE_REASONS = ("No space left on device", "Read-only file system", "Permission denied",
                    "Disk quota exceeded", "No such file or directory")


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
        # Orbax's writer threads wait for a "directories created" signal. Created in a thread of
        # their own, a folder that turns read-only mid-save fails without sending it, and those
        # (non-daemon) threads keep the process from exiting long after the error.
        # Created by `save` itself, a failure is raised there (as the usual one-line error).
        async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False),
        read_only=read_only,
        create=not read_only,
    )
    if not read_only and cluster.is_primary():  # the manager creates the folder
        files = OwnedFolder(Path(workdir))
        files.inside(CHECKPOINT_DIR)  # not a link
        files.record(f"{CHECKPOINT_DIR}/")
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, meta: dict[str, Any],
         metrics: dict[str, float] | None = None) -> None:
    """Start an async save of `state` at its step; `metrics` feed the keep-best policy.

    The state's checksum goes into `meta`, so that a restore can prove it read back every byte.
    Orbax is handed the host copy that the checksum reads anyway: it writes NumPy arrays with
    less CPU time than device arrays, time that the async save would otherwise take from the
    next epoch. A restore still returns
    device arrays, placed like the state it restores into.
    """
    step = int(state.step)
    state = jax.device_get(state.as_dict())  # the table every checkpoint holds
    meta = meta | {STATE_BLOCKS_SHA256: state_blocks_sha256(state)}
    _check_room(manager, state)
    _quiet_abandoned_io()
    with _storage_errors(manager):
        manager.wait_until_finished()  # the save before: finished, its files are listed now
        if cluster.is_primary():
            workdir = Path(manager.directory).parent
            record_saved(workdir)
            OwnedFolder(workdir).target(f"{CHECKPOINT_DIR}/{step}/")  # never a user's folder
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)),
                     metrics=metrics, force=True)


def restore(manager: ocp.CheckpointManager, step: int,
            like_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Restore `step` into the structure, shapes and shardings of `like_state`.

    Raises `CheckpointError` (without a fix: callers know which one applies) when the checkpoint
    cannot be read back or its bytes do not match the checksum saved with it.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state.as_dict())
    where = f"checkpoint {step} in {manager.directory}"
    _quiet_abandoned_io()  # before, not after: the leftovers may fail before we catch
    try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax and tensorstore raise anything from KeyError to Exception
        while e.__cause__ is not None:  # the innermost error names the file and the fault
            e = e.__cause__
            if isinstance(e, KeyboardInterrupt):  # a Ctrl-C in their threads: not damage
                raise e from None
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"{where} cannot be read ({reason}): it is damaged or belongs to "
                              "another model or optimizer") from None
    state, meta = restored["state"], restored["meta"]
    # Gathered where other processes' devices hold some models (a sweep's program split over
    # every process's devices): every process restores, so every one takes part.
    if not _intact(sharding.to_host(state), meta):
        raise CheckpointError(f"{where} is damaged: its bytes do not match the checksum saved "
                              "with it")
    return TrainState.from_dict(state), meta


@functools.cache  # once per process
def _quiet_abandoned_io() -> None:
    """Keep a failed restore's or save's leftovers off stderr; the error is raised as usual.

    When one array cannot be read (or written: a folder that turned read-only mid-save), orbax
    closes its event loop while its other reads or writes are still under way, and each of
    those fails on its own, later: tensorstore posts its result to the closed loop
    ("RuntimeError: Event loop is closed"), orbax's abandoned coroutines raise as they are
    finalised, and asyncio logs their tasks' and futures' unretrieved exceptions. Python prints
    each as a traceback, at any moment up to exit: hundreds of lines under the one-line error the
    user got, or under a run that fell back to an older checkpoint and is fine. None of them
    reaches a caller; only these are hidden, any other such message still shows.
    """
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
        closed_loop = isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        if not (closed_loop or (code is not None and _ORBAX_SOURCE in code.co_filename)):
            previous(unraisable)

    def unretrieved_by_orbax(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        return not (message.partition("\n")[0].endswith("exception was never retrieved") and
                    (_ORBAX_SOURCE in message or _from_orbax(error)))

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(unretrieved_by_orbax)


def _from_orbax(error: BaseException | None) -> bool:
    """An error of orbax's reads or writes: raised in its code, or tensorstore's about the
    OCDBT files that orbax keeps arrays in (a read's futures that orbax no longer awaits)."""
    if error is None:
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return any(_ORBAX_SOURCE in frame.filename for frame in frames) or "OCDBT" in str(error)


def restore_newest_intact(manager: ocp.CheckpointManager, like_state: TrainState,
                          warn: Callable[[str], None]
                          ) -> tuple[int, TrainState, dict[str, Any]] | None:
    """(step, state, meta) of the newest checkpoint that restores intact; None if there are none.

    Damaged checkpoints newer than it are moved to `checkpoints-unreadable/` with a warning, so
    the resumed run can write those steps again. If no checkpoint restores, nothing is moved and
    the error names the newest one's problem.
    """
    damaged: list[tuple[int, CheckpointError]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, meta = restore(manager, step, like_state)
        except CheckpointError as e:
            damaged.append((step, e))
            continue
        for bad_step, error in damaged:
            if cluster.is_primary():
                moved = _move_aside(manager, bad_step)
                warn(f"warning: {error}; moved it to {moved} and falling back to step {step}")
        if damaged:
            cluster.sync("damaged checkpoints moved aside")
            manager.reload()  # forget the moved steps
        return step, state, meta
    if damaged:
        raise CheckpointError(f"no checkpoint can be restored, the newest: {damaged[0][1].problem}",
                              f"pass {RESTART} to start over, or choose another {WORKDIR}")
    return None


def _move_aside(manager: ocp.CheckpointManager, step: int) -> Path:
    source = Path(manager.directory) / str(step)  # orbax's default step names: the bare number
    files = OwnedFolder(source.parent.parent)
    files.folder(UNREADABLE_DIR)
    target = files.target(f"{UNREADABLE_DIR}/{step}-{time.strftime('%Y%m%dT%H%M%S')}/",
                          replace=False)
    shutil.move(source, target)
    record_saved(files.path)  # orbax's files, moved with their folder
    return target


def resolve_step(manager: ocp.CheckpointManager, which: str) -> int:
    """`latest`, `best` or a step number -> a step that exists in the workdir."""
    steps = manager.all_steps()
    if not steps:
        raise CheckpointError(f"no checkpoints in {manager.directory}",
                              "train first with `digitsjax train`")
    if which == "latest":
        return max(steps)
    if which == "best":
        scored = {step: m[BEST_METRIC] for step in steps
                  if (m := manager.metrics(step)) and BEST_METRIC in m}
        if not scored:
            raise CheckpointError(f"no checkpoint in {manager.directory} has a {BEST_METRIC}",
                                  f"use {CHECKPOINT} latest")
        return max(scored, key=lambda step: (scored[step], step))  # as BestN breaks ties
    if which.isdigit() and int(which) in steps:
        return int(which)
    raise CheckpointError(f"checkpoint {which!r} is not latest, best or one of the saved "
                          f"steps {sorted(steps)}", f"choose another with {CHECKPOINT}")
