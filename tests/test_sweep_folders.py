"""A sweep's folder is the sweep's alone: locked as a whole while it runs, written only through
its ledger (a user's file of the same name as a summary is never replaced), and every point's
folder, named from grid values, stays inside it.

Refusals come before anything is written, and on the command line as one line, exit 2.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from digitsjax.apps.sweep import (
    SWEEP_JSON,
    make_variants,
    run_sweep,
    sweep_folder,
    write_summary,
)
from digitsjax.core.config import load_pipeline, pipeline_to_dict
from digitsjax.errors import CheckpointError, FileError
from digitsjax.files import LEDGER, OwnedFolder
from digitsjax.main import main
from digitsjax.run.lock import LOCK, workdir_lock

from . import conftest
from .conftest import REPO, run_cli
from .filesystem import files

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
SETS = (*conftest.TINY, "train.epochs=1")
GRID = {"seed": [0]}


def base():
    return load_pipeline(PIPELINE, list(SETS))


def sweep_cli(folder, *grid: str):
    return run_cli("sweep", str(PIPELINE), "--workdir", str(folder),
                   *(f"--grid={g}" for g in (grid or ("seed=[0]",))),
                   *(f"--set={s}" for s in SETS))


def a_sweep_record(grid=None) -> dict:
    """sweep.json as a sweep writes it, for points not trained yet."""
    grid = grid or GRID
    variants = make_variants(base(), grid)
    return {"pipeline": pipeline_to_dict(base()), "grid": grid,
            "variants": [{"name": v.name, "values": v.values, "workdir": v.name, "model": None}
                         for v in variants]}


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_folder_holding_the_users_sweep_files_is_refused_and_left_as_it_is(tmp_path):
    for name, text in (("sweep.md", "# my notes"), ("sweep.json", '{"mine": true}'),
                       ("sweep.csv", "a,b\n1,2\n")):
        (tmp_path / name).write_text(text)
    before = files(tmp_path)
    line = one_line_error(sweep_cli(tmp_path))
    assert line == (f"digitsjax: error: {tmp_path} is not a sweep folder (it has no sweep.json "
                    "that digitsjax wrote) and holds files (sweep.csv, sweep.json, sweep.md); "
                    "sweep into a new or empty folder: choose one with --workdir")
    assert files(tmp_path) == before and sorted(os.listdir(tmp_path)) == sorted(before)


def test_in_a_sweep_folder_a_users_file_named_as_a_summary_is_never_replaced(tmp_path):
    OwnedFolder(tmp_path).write_json(SWEEP_JSON, a_sweep_record())
    (tmp_path / "sweep.md").write_text("my notes")
    before = files(tmp_path)
    with pytest.raises(FileError, match=r"sweep\.md exists and digitsjax did not write it"):
        run_sweep(base(), GRID, tmp_path, echo=lambda _: None)
    assert files(tmp_path) == before


def test_a_sweep_into_a_folder_being_trained_is_refused_naming_the_holder(tmp_path):
    """As `sweep --workdir W` while `train` runs in W: the folder's lock is the sweep's too."""
    with workdir_lock(tmp_path, notice=print):
        line = one_line_error(sweep_cli(tmp_path))
    assert line.startswith(f"digitsjax: error: {tmp_path} is being trained by pid {os.getpid()} "
                           f"on {socket.gethostname()} since ")
    assert sorted(os.listdir(tmp_path)) == [LEDGER, LOCK]  # the holder's lock, nothing of ours


def test_a_second_sweep_of_a_sweep_folder_is_refused_while_the_first_runs(tmp_path):
    OwnedFolder(tmp_path).write_json(SWEEP_JSON, a_sweep_record())
    with workdir_lock(tmp_path, notice=print):  # the first sweep, running
        before = files(tmp_path)
        with pytest.raises(CheckpointError, match="is being trained by pid"):
            run_sweep(base(), {"seed": [1]}, tmp_path, echo=lambda _: None)
        assert files(tmp_path) == before


@pytest.mark.parametrize("value", ["x/../../../outside", "x/../.."])
def test_a_points_folder_named_by_grid_values_never_leaves_the_sweep_folder(tmp_path, value):
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(FileError, match="is not a name inside"):
        run_sweep(base(), {"data.mnist_dir": [value]}, sweep_dir, echo=lambda _: None)
    assert os.listdir(tmp_path) == []


def test_a_link_in_the_place_of_a_points_folder_is_not_followed(tmp_path):
    sweep_dir, elsewhere = tmp_path / "sweep", tmp_path / "elsewhere"
    elsewhere.mkdir()
    sweep_dir.mkdir()
    OwnedFolder(sweep_dir).write_json(SWEEP_JSON, a_sweep_record())
    (sweep_dir / "seed=0").symlink_to(elsewhere)
    with pytest.raises(FileError, match="is a symbolic link"):
        run_sweep(base(), GRID, sweep_dir, echo=lambda _: None)
    assert os.listdir(elsewhere) == []


def test_a_sweep_folder_of_an_earlier_version_is_adopted_once_and_only_its_own_files(tmp_path):
    """Written before sweeps kept a ledger: its sweep.json is a sweep's record, so the entries a
    sweep writes are listed (and may be rewritten); the user's other files are not."""
    (tmp_path / SWEEP_JSON).write_text(json.dumps(a_sweep_record()))
    (tmp_path / "sweep.md").write_text("an earlier summary")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "sweep.png").write_bytes(b"\x89PNG earlier")
    (tmp_path / "notes.txt").write_text("mine")
    assert sweep_folder(tmp_path).written() == {SWEEP_JSON, "sweep.md", "plots/",
                                                "plots/sweep.png"}
    write_summary(tmp_path)
    assert (tmp_path / "sweep.md").read_text() != "an earlier summary"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not OwnedFolder(tmp_path).owns("notes.txt")


@pytest.mark.parametrize("record", [
    {"mine": True},
    {"pipeline": {}, "grid": {"seed": [0]}, "variants": [{"name": "x", "values": {}}]},
])
def test_a_sweep_json_that_is_no_sweeps_record_adopts_nothing(tmp_path, record):
    (tmp_path / SWEEP_JSON).write_text(json.dumps(record))
    (tmp_path / "sweep.md").write_text("mine")
    assert sweep_folder(tmp_path).written() == frozenset()
    assert not (tmp_path / LEDGER).exists()


def test_plots_of_a_folder_whose_sweep_json_is_the_users_is_one_line(tmp_path, capsys):
    (tmp_path / SWEEP_JSON).write_text('{"mine": true}')
    assert main(["plots", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"digitsjax: error: {tmp_path / SWEEP_JSON} is not a sweep's record (its pipeline, grid "
        "and points); run `digitsjax sweep` into a new folder\n")
    assert os.listdir(tmp_path) == [SWEEP_JSON]
