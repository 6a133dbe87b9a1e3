"""`digitsjax runs` and `digitsjax compare`: what every run is and how runs differ, from the files
runs write as they go (no checkpoint is read)."""

from __future__ import annotations

import shutil

import pytest

from digitsjax.apps.runs import compare, find_workdirs, runs_table, summarize
from digitsjax.core.config import load_pipeline
from digitsjax.errors import CheckpointError
from digitsjax.main import main
from digitsjax.run.lock import workdir_lock
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import read_metrics, truncate_metrics
from digitsjax.run.workdir import Workdir

from . import conftest
from .conftest import REPO

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
TINY = (*conftest.TINY, "train.epochs=2")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, mnist_dir):
    """Three runs: a finished one, another seed, and one stopped after its first epoch."""
    root = tmp_path_factory.mktemp("checkpoints")
    for name, extra in (("a", ()), ("b", ("seed=1",))):
        train_pipeline(load_pipeline(PIPELINE, [*TINY, *extra]), root / name,
                       echo=lambda _: None)
    shutil.copytree(root / "a", root / "stopped")
    truncate_metrics(root / "stopped", last_step=10)
    (root / "not-a-run").mkdir()
    return root


def test_each_run_shows_its_state_epochs_results_and_fingerprint(runs_root):
    a, b = Workdir.open(runs_root / "a"), Workdir.open(runs_root / "b")
    finished, stopped = summarize(a), summarize(Workdir.open(runs_root / "stopped"))
    record = read_metrics(runs_root / "a")[-1]
    assert (finished.state, finished.epochs) == ("finished", "2/2")
    assert finished.test == f"{100 * record['test_accuracy']:.2f}%"
    assert finished.params_sha256 == a.result["params_sha256"][:12]
    assert (stopped.state, stopped.epochs) == ("interrupted", "1/2")
    with workdir_lock(runs_root / "b", notice=print):
        assert summarize(b).state.startswith("running (pid ")
    assert summarize(b).state == "finished"


def test_runs_lists_every_workdir_under_a_folder_in_one_table(runs_root, capsys):
    assert [w.path.name for w in find_workdirs(runs_root)] == ["a", "b", "stopped"]
    table = runs_table([summarize(w) for w in find_workdirs(runs_root)]).splitlines()
    assert table[0].split() == ["run", "state", "epochs", "best", "validation", "test",
                                "params_sha256", "age"]
    assert [line.split()[0] for line in table[1:]] == ["a", "b", "stopped"]
    assert main(["runs", str(runs_root)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == table[0]


def test_compare_shows_only_the_keys_that_differ_and_draws_the_curves(runs_root, tmp_path):
    text, plot = compare([Workdir.open(runs_root / "a"), Workdir.open(runs_root / "b")],
                         tmp_path / "compare.png")
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"]
    assert lines[1].split() == ["seed", "0", "1"]  # the one pipeline key that differs
    assert [line.split()[0] for line in lines[2:]] == ["epochs", "best", "test",
                                                       "params_sha256"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_folder_that_is_no_folder_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError):
        find_workdirs(tmp_path / "missing")
