"""A run's folder: preparing it, and the `manifest.json` that says what it holds.

The manifest records everything needed to judge whether two runs should agree bit for bit:
the resolved pipeline and its sha256, package versions, platform, devices and the dataset's
checksums. Only the primary process writes the workdir's files other than checkpoints.

A command opens a workdir once, as a `Workdir`: its path and the manifest read then, from which
the pipeline, the program and the result are taken. Whatever needs a piece of the workdir
receives that value rather than its path, and what records into the manifest writes it from
the copy in hand and returns the updated `Workdir`.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from digitsjax.core.config import Pipeline, pipeline_from_dict, pipeline_sha256, pipeline_to_dict
from digitsjax.core.hyper import PerModel
from digitsjax.core.optim import SCHEDULES
from digitsjax.core.program import Program
from digitsjax.errors import RESTART, WORKDIR, CheckpointError
from digitsjax.files import write_json_atomic
from digitsjax.run import checkpoint, cluster
from digitsjax.run.backend import xla_flags
from digitsjax.run.lock import LOCK, workdir_lock
from digitsjax.run.records import METRICS
from digitsjax.run.tensorboard import remove_event_files

MANIFEST = "manifest.json"
# Pipeline keys that do not change what a run computes: a workdir may be resumed with them
# changed (e.g. MNIST moved to another folder, or a different checkpoint cadence).
RESULT_NEUTRAL = ("name", "data.mnist_dir", "data.tfds_data_dir", "checkpoint.")
PACKAGES = ("digitsjax", "jax", "jaxlib", "optax", "orbax-checkpoint", "tensorflow-datasets",
            "tensorflow-cpu", "tensorflow", "numpy")


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
    }


def build_manifest(program: Program | Pipeline, dataset_checksums: dict[str, Any],
                   per_model: PerModel | None = None) -> dict[str, Any]:
    """A new run's manifest: its program (the pipeline, and a sweep's per-model values) and
    where it runs."""
    if isinstance(program, Pipeline):  # run/loop.py's call, until it holds a Program
        program = Program(program, per_model)
    pipeline = program.pipeline
    return {
        "pipeline": pipeline_to_dict(pipeline),
        "pipeline_sha256": pipeline_sha256(pipeline),
        **({PER_MODEL: program.per_model.to_json()} if program.per_model is not None else {}),
        "versions": package_versions(),
        "platform": platform_info(),
        "dataset": dataset_checksums,
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


PER_MODEL = "per_model"
"""The manifest's record of a sweep program's per-model values (absent for other runs)."""


@dataclass(frozen=True)
class Workdir:
    """A workdir as one command sees it: its path and its manifest, read once.

    The pipeline and the program are parsed from the manifest when first asked for (a listing
    of runs reads manifests whose pipeline it never parses), and then kept.
    """

    path: Path
    manifest: dict[str, Any]

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
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
            raise CheckpointError(f"{manifest_path} is unreadable ({e})",
                                  f"restore it or retrain with {RESTART}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("pipeline"), dict):
            raise CheckpointError(f"{manifest_path} is not a digitsjax manifest (it has no "
                                  "pipeline table)", f"restore it or retrain with {RESTART}")
        return cls(path, manifest)

    @cached_property
    def pipeline(self) -> Pipeline:
        """The pipeline the workdir was trained with, as its manifest records it."""
        return pipeline_from_dict(self.manifest["pipeline"], source=str(self.path))

    @cached_property
    def program(self) -> Program:
        """The recorded pipeline and, for a sweep's program, its recorded per-model values."""
        return Program(self.pipeline, _recorded_per_model(self.manifest))

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
        return self._write(self.manifest | {"result": {
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
        return self._write(self.manifest | {
            "extensions": [*self.manifest.get("extensions", []), extension],
            "pipeline": pipeline_to_dict(pipeline), "pipeline_sha256": pipeline_sha256(pipeline)})

    def _write(self, manifest: dict[str, Any]) -> Workdir:
        write_json_atomic(self.path / MANIFEST, manifest)
        return Workdir(self.path, manifest)


def _recorded_per_model(manifest: dict[str, Any]) -> PerModel | None:
    """A sweep program's per-model values, as its manifest records them; None for a run."""
    values = manifest.get(PER_MODEL)
    return PerModel({key: tuple(v) for key, v in values.items()}) if values else None


@contextmanager
def prepared_workdir(workdir: Path, restart: bool,
                     notice: Callable[[str], None]) -> Iterator[Path]:
    """`workdir` created and locked for this run (by process 0), and with `restart` emptied of a
    previous run's files, for as long as the `with` block lasts."""
    primary = cluster.is_primary()
    if primary:
        _make_workdir(workdir)
        _check_ours(workdir, restart)  # before writing anything there, even the lock
        _check_writable(workdir)
    with workdir_lock(workdir, notice) if primary else nullcontext():
        if primary and restart:
            _remove_run_files(workdir)
        cluster.sync("workdir prepared")
        yield workdir


def _make_workdir(workdir: Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise CheckpointError(f"workdir {workdir} is a file, not a folder",
                              f"choose another with {WORKDIR}")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"workdir {workdir} is not writable ({e.strerror})",
                              f"choose another with {WORKDIR}") from None


def _check_writable(workdir: Path) -> None:
    try:
        probe = workdir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"workdir {workdir} is not writable ({e.strerror})",
                              f"choose another with {WORKDIR}") from None


# What runs write into a workdir's checkpoint folders: orbax's step folders (and their
# unfinished `STEP.orbax-checkpoint-tmp-N`), and damaged steps set aside as `STEP-TIMESTAMP`.
_RUN_ENTRIES = re.compile(r"\d+(\.orbax-checkpoint-tmp-\d+)?|\d+-\d{8}T\d{6}")


def _check_ours(workdir: Path, restart: bool) -> None:
    """Refuse a folder digitsjax did not make, and a `restart` that would delete a stranger.

    A run writes only into a new or empty folder or its own workdir, and `restart` deletes only
    what runs wrote: a folder without a digitsjax manifest is never emptied.
    """
    folders = [checkpoint.checkpoint_dir(workdir), checkpoint.unreadable_dir(workdir)]
    entries = [entry for folder in folders if folder.is_dir() for entry in folder.iterdir()]
    if not _is_digitsjax_workdir(workdir):
        others = sorted(p.name for p in workdir.iterdir()
                        if p.name not in (LOCK, *(f.name for f in folders)))
        if others or entries:
            raise CheckpointError(
                f"{workdir} is not a digitsjax workdir (it has no {MANIFEST}) and holds files "
                f"({', '.join(others + [str(e.relative_to(workdir)) for e in entries][:3])})",
                f"train into a new or empty folder: choose one with {WORKDIR}")
    strangers = [e for e in entries if not _RUN_ENTRIES.fullmatch(e.name)]
    if restart and strangers:
        raise CheckpointError(
            f"{workdir} holds files that no run wrote ({strangers[0].relative_to(workdir)}), "
            f"which a restart would delete", f"move them away first, or choose another "
            f"with {WORKDIR}")


def _is_digitsjax_workdir(workdir: Path) -> bool:
    try:
        Workdir.open(workdir)
    except CheckpointError:
        return False
    return True


def _remove_run_files(workdir: Path) -> None:
    for folder in (checkpoint.checkpoint_dir(workdir), checkpoint.unreadable_dir(workdir)):
        shutil.rmtree(folder, ignore_errors=True)
    for name in (MANIFEST, METRICS):
        (workdir / name).unlink(missing_ok=True)
    remove_event_files(workdir)


def check_compatible(workdir: Workdir | Path, program: Program | Pipeline,
                     per_model: PerModel | None = None) -> None:
    """Refuse to continue a workdir whose checkpoints come from a different pipeline (or, for a
    sweep's program, different per-model values).

    One change is a continuation, not another pipeline: more `train.epochs` under a schedule
    that does not depend on the run's length, since then the first epochs are the same run.
    """
    if not isinstance(workdir, Workdir):  # run/loop.py's call, until it holds a Workdir
        workdir = Workdir.open(workdir)
    if isinstance(program, Pipeline):  # and a Program
        program = Program(program, per_model)
    recorded, pipeline = workdir.program, program.pipeline
    # Round-tripped so that keys added since the manifest was written compare as defaults.
    diffs = differences(pipeline_to_dict(recorded.pipeline), pipeline_to_dict(pipeline),
                        ignore=(*RESULT_NEUTRAL, EPOCHS))
    if recorded.per_model != program.per_model:
        diffs.append(f"{PER_MODEL}: {_json_or_none(recorded.per_model)} -> "
                     f"{_json_or_none(program.per_model)}")
    if diffs:
        raise CheckpointError(
            f"{workdir.path} holds checkpoints of a different pipeline ({'; '.join(diffs)})",
            f"pass {RESTART} to start over there, or choose another {WORKDIR}")
    if pipeline.train.epochs != recorded.pipeline.train.epochs:
        _check_extension(workdir.path, recorded.pipeline.train.epochs, pipeline)


EPOCHS = "train.epochs"


def _json_or_none(per_model: PerModel | None) -> str:
    return json.dumps(per_model.to_json()) if per_model is not None else "none"


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


# Readers by path, for the modules that do not hold a Workdir yet (run/loop.py, apps/sweep.py);
# each opens the manifest again. Everything else opens a `Workdir` once and passes it down.


def read_manifest(workdir: Path) -> dict[str, Any]:
    return Workdir.open(workdir).manifest


def recorded_pipeline(workdir: Path) -> Pipeline:
    """The pipeline a workdir was trained with, as its manifest records it."""
    return Workdir.open(workdir).pipeline


def recorded_per_model(workdir: Path) -> PerModel | None:
    """A sweep program's per-model values, as its manifest records them; None for a run."""
    return _recorded_per_model(Workdir.open(workdir).manifest)


def record_result(workdir: Path, step: int, params_sha256: str,
                  model_params_sha256: list[str] | None = None) -> None:
    Workdir.open(workdir).record_result(step, params_sha256, model_params_sha256)


def record_extension(workdir: Path, pipeline: Pipeline, step: int) -> None:
    Workdir.open(workdir).record_extension(Program(pipeline), step)
