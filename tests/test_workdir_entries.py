"""What digitsjax writes in a workdir, and in a sweep's folder, is listed in one place
(`run.workdir.WORKDIR_ENTRIES`, `apps.sweep.SWEEP_ENTRIES`), and paths are handed out for those
names alone: what a folder may hold that digitsjax did not write can be told at a glance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from digitsjax.apps.sweep import SWEEP_ENTRIES, SWEEP_JSON
from digitsjax.run.workdir import MANIFEST, owned

from .conftest import REPO, TINY, run_cli, train_mnist_mlp


@pytest.fixture(scope="module")
def used_workdir(tmp_path_factory, mnist_dir) -> Path:
    """A finished run, its plots drawn and its network exported: everything a workdir gets."""
    workdir = train_mnist_mlp(tmp_path_factory.mktemp("used"), [*TINY, "train.epochs=1"],
                              mnist_dir)
    for command in (["plots", str(workdir)], ["export", str(workdir), "--format", "npz"]):
        result = run_cli(*command)
        assert result.returncode == 0, result.stderr
    return workdir


def test_every_entry_of_a_used_workdir_is_one_digitsjax_lists(used_workdir):
    entries = sorted(entry.name for entry in used_workdir.iterdir())
    assert {MANIFEST, "metrics.jsonl", "checkpoints", "plots", "export"} <= set(entries)
    assert [name for name in entries if not owned(name)] == []


def test_a_users_names_are_not_among_a_workdirs_entries():
    assert not owned("notes.txt") and not owned("my-data")


def test_every_entry_of_a_sweep_folder_is_listed_or_a_points_workdir(tmp_path):
    result = run_cli("sweep", str(REPO / "pipelines" / "mnist_mlp.toml"), "--grid",
                     "optimizer.learning_rate=[0.001,0.01]", "--grid", "model.hidden=[[8],[16]]",
                     "--set", "train.epochs=1", "--set", "data.validation_size=59000",
                     "--set", "train.batch_size=100", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert run_cli("plots", str(tmp_path)).returncode == 0
    workdirs = {entry["workdir"] for entry in json.loads((tmp_path / SWEEP_JSON).read_text())
                ["variants"]}
    assert workdirs == {"program-1", "program-2"}  # two shapes, two learning rates each
    strangers = [entry.name for entry in tmp_path.iterdir() if entry.name not in workdirs and
                 not any(entry.match(pattern) for pattern in SWEEP_ENTRIES)]
    assert strangers == []
    for name in workdirs:
        assert [e.name for e in (tmp_path / name).iterdir() if not owned(e.name)] == []
