"""A run's folder: preparing it, and the `manifest.json` that says what it holds.

The manifest records everything needed to judge whether two runs should agree bit for bit:
the resolved pipeline and its sha256, package versions, platform, devices and the dataset's
checksums. Only the primary process writes the workdir's files other than checkpoints.

Every entry a run writes is listed in the workdir's ledger (`Workdir.files`) before it is
written, and a restart deletes exactly the listed entries: a file of the user's, whatever its
name, is never deleted, and a restart that would leave one among the run's files is refused.

A command opens a workdir once, as a `Workdir`: its path and the manifest read then, from which
the pipeline, the program and the result are taken. Whatever needs a piece of the workdir
receives that value rather than its path, and what records into the manifest writes it from
the copy in hand and returns the updated `Workdir`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from digitsjax.core.config import Pipeline, pipeline_from_dict, pipeline_sha256, pipeline_to_dict
from digitsjax.core.optim import SCHEDULES
from digitsjax.core.placement import Placement
from digitsjax.core.program import Program, recorded_program
from digitsjax.errors import RESTART, WORKDIR, CheckpointError
from digitsjax.files import LEDGER, OwnedFolder, a_few
from digitsjax.run import checkpoint, cluster
from digitsjax.run.backend import cpu_threads, xla_flags
from digitsjax.run.lock import LOCK, workdir_lock
from digitsjax.run.records import METRICS
from digitsjax.run.tensorboard import EVENT_FILES

MANIFEST = "manifest.json"
# Pipeline keys that do not change what a run computes: a workdir may be resumed with them
# changed (e.g. MNIST moved to another folder, or a different checkpoint cadence).
RESULT_NEUTRAL = ("name", "data.mnist_dir", "data.tfds_data_dir", "checkpoint.")
PACKAGES = ("digitsjax", "jax", "jaxlib", "optax", "orbax-checkpoint", "tensorflow-datasets",
            "tensorflow-cpu", "tensorflow", "numpy")


PLOTS_DIR, EXPORT_DIR = "plots", "export"
WRITE_PROBE = ".write-test"
WORKDIR_ENTRIES: dict[str, str] = {
    MANIFEST: "what the run is: its pipeline, versions, platform, data and result",
    METRICS: "one record per epoch (run.records)",
    EVENT_FILES: "the same records for TensorBoard (run.tensorboard)",
    checkpoint.CHECKPOINT_DIR: "the checkpoints (run.checkpoint)",
    checkpoint.UNREADABLE_DIR: "damaged checkpoints, moved aside, never deleted",
    LOCK: "who is training the workdir now (run.lock)",
    LEDGER: "every entry digitsjax wrote here: what a restart deletes (files.OwnedFolder)",
    f"{WRITE_PROBE}*": "an empty file that proves the folder writable, removed at once",
    PLOTS_DIR: "`digitsjax plots`' pictures",
    EXPORT_DIR: "`digitsjax export`'s files, unless told another place",
}
"""Every file or folder digitsjax writes in a workdir (names, or patterns of names), and what
it is: what a workdir may hold, listed in one place (`Workdir.files` writes them)."""


def owned(name: str) -> bool:
    """Whether `name`, an entry of a workdir, is one that digitsjax writes there."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in WORKDIR_ENTRIES)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def platform_info() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "backend": jax.default_backend(),
        "process_count": jax.process_count(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "device_count": len(devices),
        "xla_flags": xla_flags(),  # e.g. GPU determinism: part of what the programs compute
        "cpu_threads": cpu_threads(),  # XLA:CPU's threads: how its matmuls round
    }


def build_manifest(program: Program, dataset_checksums: dict[str, Any],
                   placement: Placement | None = None,
                   epochs: tuple[int, int] | None = None) -> dict[str, Any]:
    """A new run's manifest: its program (the pipeline, and a sweep's per-model values) and
    where it runs (with `placement`, how its models were placed when it started). `epochs`:
    a sweep's stage's first and last epochs, when it trains only part of the run."""
    pipeline = program.pipeline
    return {
        "pipeline": pipeline_to_dict(pipeline),
        "pipeline_sha256": pipeline_sha256(pipeline),
        **({PER_MODEL: program.to_json()} if program.is_sweep else {}),
        **({STAGE: {"epochs": list(epochs)}} if epochs else {}),
        "versions": package_versions(),
        "platform": platform_info(),
        **({"placement": placement.to_json()} if placement is not None else {}),
        "dataset": dataset_checksums,
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


PER_MODEL = "per_model"
"""The manifest's record of a sweep program's per-model values (absent for other runs)."""
STAGE = "stage"
"""The manifest's record of a sweep's stage (successive halving, population-based training):
the epochs after which it starts (from the stage before's states) and at which it stops
(absent for other runs)."""


def _not_a_manifest(manifest: Any) -> str:
    """What in `manifest` digitsjax never writes so ("" if nothing): the keys that reading a
    workdir takes as they are written, rather than parsing them, must be as written."""
    pipeline = manifest.get("pipeline") if isinstance(manifest, dict) else None
    if not isinstance(pipeline, dict):
        return "it has no pipeline table"
    if not isinstance(pipeline.get("train"), dict):
        return "its pipeline has no train table"
    epochs = pipeline["train"].get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        return "its pipeline's train.epochs is not a whole number of epochs"
    if not isinstance(manifest.get("result", {}), dict):
        return "its result is not a table"
    stage = manifest.get(STAGE, {"epochs": [0, epochs]})
    bounds = stage.get("epochs") if isinstance(stage, dict) else None
    if not (isinstance(bounds, list) and len(bounds) == 2
            and all(isinstance(e, int) and not isinstance(e, bool) for e in bounds)
            and 0 <= bounds[0] < bounds[1] <= epochs):
        return f"its {STAGE} is not a stage's first and last epochs"
    return ""


@dataclass(frozen=True)
class Workdir:
    """A workdir as one command sees it: its path and its manifest, read once.

    The pipeline and the program are parsed from the manifest when first asked for (a listing
    of runs reads manifests whose pipeline it never parses), and then kept.
    """

    path: Path
    manifest: dict[str, Any] | None
    """None in a new (or restarted) workdir until its run writes one (`write_manifest`)."""

    @classmethod
    def open(cls, path: str | Path) -> Workdir:
        """The workdir at `path`; a CheckpointError if it has no readable digitsjax manifest."""
        path = Path(path)
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise CheckpointError(f"{path} is not a digitsjax workdir (no {MANIFEST})",
                                  "train into it first with `digitsjax train`") from None
        except (OSError, ValueError, RecursionError) as e:  # not JSON, not UTF-8, too deep
            raise CheckpointError(f"{manifest_path} is unreadable ({e})",
                                  f"restore it or retrain with {RESTART}") from None
        damage = _not_a_manifest(manifest)
        if damage:
            raise CheckpointError(f"{manifest_path} is not a digitsjax manifest ({damage})",
                                  f"restore it or retrain with {RESTART}")
        return cls(path, manifest)

    @cached_property
    def pipeline(self) -> Pipeline:
        """The pipeline the workdir was trained with, as its manifest records it."""
        return pipeline_from_dict(self.manifest["pipeline"], source=str(self.path))

    @cached_property
    def program(self) -> Program:
        """The recorded pipeline and, for a sweep's program, its recorded per-model values."""
        return recorded_program(self.pipeline, self.manifest.get(PER_MODEL))

    @property
    def epochs(self) -> tuple[int, int]:
        """The epochs this workdir trains: after which it starts (0 but for a sweep's stage,
        which continues the last stage's states) and at which it stops."""
        default = [0, self.manifest["pipeline"]["train"]["epochs"]]
        start, stop = self.manifest.get(STAGE, {}).get("epochs", default)
        return start, stop

    @property
    def result(self) -> dict[str, Any]:
        """The finished run's fingerprints (`record_result`); {} before it finishes."""
        return self.manifest.get("result", {})

    def record_result(self, step: int, params_sha256: str,
                      model_params_sha256: list[str] | None = None) -> Workdir:
        """The finished run's fingerprint in its manifest (and each model's, for a sweep's
        program), so listing runs and summarising sweeps need no checkpoint.

        Written once: re-running a finished workdir changes nothing in it.
        """
        if self.result.get("params_sha256") == params_sha256:
            return self
        return self.write_manifest(self.manifest | {"result": {
            "step": step, "params_sha256": params_sha256,
            **({"model_params_sha256": model_params_sha256} if model_params_sha256 else {}),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}})

    def record_extension(self, program: Program, step: int) -> Workdir:
        """The manifest of a continued run: its new pipeline, and when it was extended from
        what."""
        pipeline = program.pipeline
        extension = {"from_epochs": self.manifest["pipeline"]["train"]["epochs"],
                     "to_epochs": pipeline.train.epochs, "at_step": step,
                     "command": " ".join(sys.argv),
                     "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return self.write_manifest(self.manifest | {
            "extensions": [*self.manifest.get("extensions", []), extension],
            "pipeline": pipeline_to_dict(pipeline), "pipeline_sha256": pipeline_sha256(pipeline)})

    def write_manifest(self, manifest: dict[str, Any]) -> Workdir:
        """This workdir with `manifest` written (atomically) and held."""
        self.files.write_json(MANIFEST, manifest)
        return Workdir(self.path, manifest)

    @property
    def files(self) -> OwnedFolder:
        """The workdir as a folder with a ledger: every write into it goes through this."""
        return OwnedFolder(self.path)


@contextmanager
def prepared_workdir(path: Path, restart: bool,
                     notice: Callable[[str], None]) -> Iterator[Workdir]:
    """The workdir at `path`, created and locked for this run (by process 0), and with
    `restart` emptied of a previous run's files, for as long as the `with` block lasts. Its
    manifest is read once, here (None in a new or restarted workdir)."""
    existing = _existing(path)
    with ExitStack() as held:
        with cluster.prepared_by_primary("workdir prepared"):
            if cluster.is_primary():
                _make_workdir(path)
                _check_ours(path, existing is not None, restart)  # before writing, even the lock
                _check_writable(path)
                held.enter_context(workdir_lock(path, notice))
                _take_over(OwnedFolder(path), restart)
        yield existing if existing is not None and not restart else Workdir(path, None)


def _take_over(files: OwnedFolder, restart: bool) -> None:
    """List what runs wrote before the folder had a ledger; with `restart`, remove a previous
    run's files."""
    files.record(*_unlisted(files)[0])
    if restart:
        files.remove(_run_files(files.path))
        files.prune()


def _existing(path: Path) -> Workdir | None:
    """The digitsjax workdir at `path`, or None where there is none (yet)."""
    try:
        return Workdir.open(path)
    except CheckpointError:
        return None


def _make_workdir(workdir: Path) -> None:
    try:
        if workdir.exists() and not workdir.is_dir():
            raise CheckpointError(f"workdir {workdir} is a file, not a folder",
                                  f"choose another with {WORKDIR}")
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"workdir {workdir} is not writable ({e.strerror})",
                              f"choose another with {WORKDIR}") from None


def _check_writable(workdir: Path) -> None:
    try:  # unnamed where the system allows (O_TMPFILE): a kill leaves nothing behind
        with tempfile.TemporaryFile(prefix=WRITE_PROBE, dir=workdir):
            pass
    except OSError as e:
        raise CheckpointError(f"workdir {workdir} is not writable ({e.strerror})",
                              f"choose another with {WORKDIR}") from None


# What runs wrote into a workdir's checkpoint folders before the ledger: orbax's step folders
# (and their unfinished `STEP.orbax-checkpoint-tmp[-N]`), damaged steps set aside as
# `STEP-TIMESTAMP`.
_RUN_ENTRIES = re.compile(r"\d+(\.orbax-checkpoint-tmp(-\d+)?)?|\d+-\d{8}T\d{6}")


def _run_files(workdir: Path) -> list[str]:
    """The entries of a run that a restart deletes (those its ledger lists, in these)."""
    return [MANIFEST, METRICS, checkpoint.CHECKPOINT_DIR, checkpoint.UNREADABLE_DIR,
            *sorted(p.name for p in Path(workdir).glob(EVENT_FILES))]


def _unlisted(files: OwnedFolder) -> tuple[list[str], list[str]]:
    """The run's entries the ledger does not list: (those runs wrote, the strangers).

    Runs wrote what orbax writes in a listed step (listed once its save is finished, so a run
    killed before that left them unlisted), and, in a workdir trained before the ledger existed
    (a manifest it does not list), the run's entries by their names and orbax's layout.
    """
    unlisted = files.strangers(_run_files(files.path))
    written = set(files.written())
    if (files.path / MANIFEST).is_file() and MANIFEST not in written:
        written |= {entry for entry in unlisted if _named_by_runs(entry)}
    ours = {e for e in unlisted if e in written or checkpoint.written_by_orbax(e, written)}
    return [e for e in unlisted if e in ours], [e for e in unlisted if e not in ours]


def _named_by_runs(entry: str) -> bool:
    """Whether a run before the ledger would have written `entry` (a ledger's name for it)."""
    folders = (checkpoint.CHECKPOINT_DIR, checkpoint.UNREADABLE_DIR)
    top, step, rest = [*entry.split("/", 2), "", ""][:3]
    if not step:
        return entry in (MANIFEST, METRICS, *(f"{folder}/" for folder in folders)) or \
            fnmatch.fnmatchcase(entry, EVENT_FILES)
    return top in folders and entry.endswith("/") and not rest and \
        _RUN_ENTRIES.fullmatch(step) is not None


def _check_ours(workdir: Path, ours: bool, restart: bool) -> None:
    """Refuse a folder digitsjax did not make, and a `restart` that would leave a stranger.

    A run writes only into a new or empty folder or its own workdir, and `restart` deletes only
    what runs wrote: a folder without a digitsjax manifest is never emptied, and a user's file
    among the run's (which a restart would leave in orbax's way) is moved away first.
    """
    folders = (checkpoint.CHECKPOINT_DIR, checkpoint.UNREADABLE_DIR)
    if not ours:
        others = sorted(p.name for p in workdir.iterdir()
                        if p.name not in (LOCK, LEDGER, *folders) and not _left_probe(p))
        entries = [f"{folder}/{entry}" for folder in folders if (workdir / folder).is_dir()
                   for entry in sorted(os.listdir(workdir / folder))]
        if others or entries:
            raise CheckpointError(
                f"{workdir} is not a digitsjax workdir (it has no {MANIFEST}) and holds files "
                f"({a_few(others + entries)})",
                f"train into a new or empty folder: choose one with {WORKDIR}")
    strangers = _unlisted(OwnedFolder(workdir))[1] if restart else []
    if strangers:
        named = [entry for entry in strangers if not entry.endswith("/")] or strangers
        raise CheckpointError(
            f"{workdir} holds files that no run wrote ({a_few(named)}), which a restart would "
            f"delete", f"move them away first, or choose another with {WORKDIR}")


def _left_probe(path: Path) -> bool:
    """Whether `path` is what a run killed while it proved the folder writable left: an empty
    file named as `_check_writable`'s probe (where the system has no unnamed files)."""
    return path.name.startswith(WRITE_PROBE) and path.is_file() and not path.is_symlink() \
        and path.stat().st_size == 0


def check_compatible(workdir: Workdir, program: Program) -> None:
    """Refuse to continue a workdir whose checkpoints come from a different pipeline (or, for a
    sweep's program, different per-model values).

    One change is a continuation, not another pipeline: more `train.epochs` under a schedule
    that does not depend on the run's length, since then the first epochs are the same run.
    """
    recorded, pipeline = workdir.program, program.pipeline
    # Round-tripped so that keys added since the manifest was written compare as defaults.
    diffs = differences(pipeline_to_dict(recorded.pipeline), pipeline_to_dict(pipeline),
                        ignore=(*RESULT_NEUTRAL, EPOCHS))
    if recorded.per_model != program.per_model:
        diffs.append(f"{PER_MODEL}: {_json_or_none(recorded)} -> {_json_or_none(program)}")
    if diffs:
        raise CheckpointError(
            f"{workdir.path} holds checkpoints of a different pipeline ({'; '.join(diffs)})",
            f"pass {RESTART} to start over there, or choose another {WORKDIR}")
    if pipeline.train.epochs != recorded.pipeline.train.epochs:
        _check_extension(workdir.path, recorded.pipeline.train.epochs, pipeline)


EPOCHS = "train.epochs"


def _json_or_none(program: Program) -> str:
    return json.dumps(program.to_json()) if program.is_sweep else "none"


def _check_extension(workdir: Path, trained: int, pipeline: Pipeline) -> None:
    wanted, schedule = pipeline.train.epochs, pipeline.optimizer.schedule
    start_over = f"pass {RESTART} to train {wanted} epochs from the start there, or choose " \
                 f"another {WORKDIR}"
    if wanted < trained:
        raise CheckpointError(f"{workdir} is a run of {trained} epochs; {EPOCHS} = {wanted} "
                              "would end before its checkpoints", start_over)
    if SCHEDULES[schedule].over_total_steps:
        raise CheckpointError(
            f"{workdir} cannot be extended from {trained} to {wanted} epochs: its {schedule} "
            "schedule is defined over the run's total steps, so the longer run differs from "
            "its first step", start_over)


def differences(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = (),
                prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two nested dicts (two manifests).

    `ignore` names dotted keys to skip; an entry ending in "." skips a whole table.
    """
    diffs = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if any(path == n or (n.endswith(".") and path.startswith(n)) for n in ignore):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += differences(a, b, ignore, f"{path}.")
        elif a != b:
            diffs.append(f"{path}: {a!r} -> {b!r}")
    return diffs
