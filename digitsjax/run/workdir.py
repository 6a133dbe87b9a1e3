"""A run's folder: preparing it, and the `manifest.json` that says what it holds.

The manifest records everything needed to judge whether two runs should agree bit for bit:
the resolved pipeline and its sha256, package versions, platform, devices and the dataset's
checksums. Only the primary process writes the workdir's files other than checkpoints.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from digitsjax.core.config import Pipeline, pipeline_from_dict, pipeline_sha256, pipeline_to_dict
from digitsjax.errors import RESTART, WORKDIR, CheckpointError
from digitsjax.run import checkpoint, cluster
from digitsjax.run.backend import xla_flags
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


def build_manifest(pipeline: Pipeline, dataset_checksums: dict[str, Any]) -> dict[str, Any]:
    return {
        "pipeline": pipeline_to_dict(pipeline),
        "pipeline_sha256": pipeline_sha256(pipeline),
        "versions": package_versions(),
        "platform": platform_info(),
        "dataset": dataset_checksums,
        "command": " ".join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_manifest(workdir: Path) -> dict[str, Any]:
    path = Path(workdir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{workdir} is not a digitsjax workdir (no {MANIFEST})",
                              "train into it first with `digitsjax train`") from None
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"{path} is unreadable ({e})",
                              f"restore it or retrain with {RESTART}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("pipeline"), dict):
        raise CheckpointError(f"{path} is not a digitsjax manifest (it has no pipeline table)",
                              f"restore it or retrain with {RESTART}")
    return manifest


def recorded_pipeline(workdir: Path) -> Pipeline:
    """The pipeline a workdir was trained with, as its manifest records it."""
    return pipeline_from_dict(read_manifest(workdir)["pipeline"], source=str(workdir))


def prepare_workdir(workdir: Path, restart: bool) -> Path:
    """Create `workdir` (process 0), emptied of a previous run's files with `restart`."""
    if cluster.is_primary():
        _clean_workdir(workdir, restart)
    cluster.sync("workdir prepared")
    return workdir


def _clean_workdir(workdir: Path, restart: bool) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise CheckpointError(f"workdir {workdir} is a file, not a folder",
                              f"choose another with {WORKDIR}")
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
        raise CheckpointError(f"workdir {workdir} is not writable ({e.strerror})",
                              f"choose another with {WORKDIR}") from None


def check_compatible(workdir: Path, pipeline: Pipeline) -> None:
    """Refuse to continue a workdir whose checkpoints come from a different pipeline."""
    # Round-tripped so that keys added since the manifest was written compare as defaults.
    recorded = pipeline_to_dict(recorded_pipeline(workdir))
    diffs = differences(recorded, pipeline_to_dict(pipeline), ignore=RESULT_NEUTRAL)
    if diffs:
        raise CheckpointError(
            f"{workdir} holds checkpoints of a different pipeline ({'; '.join(diffs)})",
            f"pass {RESTART} to start over there, or choose another {WORKDIR}")


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
