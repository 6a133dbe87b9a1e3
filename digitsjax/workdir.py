"""What a run leaves next to its checkpoints: `manifest.json` and `metrics.jsonl`.

The manifest records everything needed to judge whether two runs should agree bit for bit:
the resolved pipeline and its sha256, package versions, platform, devices and the dataset's
checksums. Only the primary process writes these files.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from digitsjax.config import Pipeline, pipeline_sha256, pipeline_to_dict
from digitsjax.errors import CheckpointError

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
# Fields of a metrics record that measure the machine, not the run: they differ between replays.
TIMING_FIELDS = ("epoch_seconds", "examples_per_second", "wall_seconds")
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


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(workdir: Path) -> dict[str, Any]:
    path = Path(workdir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"{workdir} is not a digitsjax workdir (no {MANIFEST}); "
                              "train into it first with `digitsjax train`") from None
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"{path} is unreadable ({e}); "
                              "restore it or retrain with --restart") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("pipeline"), dict):
        raise CheckpointError(f"{path} is not a digitsjax manifest (it has no pipeline table); "
                              "restore it or retrain with --restart")
    return manifest


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


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    """The epoch records, oldest first.

    A last line without its newline is an append that a crash or a full disk cut short; its
    epoch has no checkpoint yet (the record is written first), so it is dropped, and the
    resumed run writes it again. Any other unreadable line is damage, reported as such.
    """
    path = Path(workdir) / METRICS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); restore it or retrain with "
                              "--restart") from None
    complete, _, _torn = text.rpartition("\n")
    records = []
    for number, line in enumerate(complete.splitlines(), 1):
        if not line.strip():
            continue
        record = _parse_record(line)
        if record is None:
            raise CheckpointError(f"{path} line {number} is not an epoch record; restore the "
                                  "file, delete the line, or retrain with --restart")
        records.append(record)
    return records


def _parse_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def append_metrics(workdir: Path, record: dict[str, Any]) -> None:
    with open(Path(workdir) / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(workdir: Path, last_step: int) -> None:
    """Drop records written after `last_step`: a resumed run re-creates them identically."""
    kept = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    path = Path(workdir) / METRICS
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
