"""`digitsjax runs` and `digitsjax compare`: what every run is and how runs differ, from the files
runs write as they go (no checkpoint is read)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from digitsjax.apps import runs
from digitsjax.apps.runs import compare, find_workdirs, runs_table, summarize
from digitsjax.core.config import load_pipeline
from digitsjax.errors import CheckpointError
from digitsjax.files import LEDGER, OwnedFolder
from digitsjax.main import main
from digitsjax.run.lock import workdir_lock
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import METRICS, read_metrics, truncate_metrics
from digitsjax.run.workdir import MANIFEST, Workdir

from . import conftest
from .conftest import REPO
from .filesystem import refusing_writes_of

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
    assert (finished.state, finished.epochs_done, finished.epochs) == ("finished", 2, 2)
    assert finished.test_accuracy == record["test_accuracy"]
    assert finished.params_sha256 == a.result["params_sha256"]
    assert (stopped.state, stopped.epochs_done, stopped.epochs) == ("interrupted", 1, 2)
    with workdir_lock(runs_root / "b", notice=print):
        assert summarize(b).state.startswith("running (pid ")
    assert summarize(b).state == "finished"


def test_runs_lists_every_workdir_under_a_folder_in_one_table(runs_root, capsys):
    assert [p.name for p in find_workdirs(runs_root)] == ["a", "b", "stopped"]
    table = runs_table([summarize(Workdir.open(p)) for p in find_workdirs(runs_root)])
    table = table.splitlines()
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


def compare_cli(runs_root, *options: str) -> int:
    return main(["compare", str(runs_root / "a"), str(runs_root / "b"), *options])


def test_compare_never_replaces_a_file_at_the_output_path(runs_root, tmp_path, capsys):
    """No ledger beside a path the user named: whatever is there is the user's."""
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"mine")
    assert compare_cli(runs_root, "--output", str(mine)) == 2
    assert capsys.readouterr().err == (f"digitsjax: error: {mine} exists; move it away, or "
                                       "choose another place\n")
    assert mine.read_bytes() == b"mine"


@pytest.mark.parametrize(("output", "problem"), [
    ("x.txt", "{tmp}/x.txt does not end in .png; the plot is a PNG: give a path such as "
              "compare.png"),
    ("somefile/x.png", "cannot write {tmp}/somefile/x.png: the file {tmp}/somefile is in the "
                       "way; move it away, or choose another place"),
])
def test_an_output_compare_cannot_write_is_one_line_before_any_run_is_read(
        runs_root, tmp_path, capsys, monkeypatch, output, problem):
    (tmp_path / "somefile").write_text("mine")
    monkeypatch.setattr(runs, "read_metrics", None)  # reading a run would fail loudly
    assert compare_cli(runs_root, "--output", str(tmp_path / output)) == 2
    assert capsys.readouterr().err == f"digitsjax: error: {problem.format(tmp=tmp_path)}\n"
    assert sorted(os.listdir(tmp_path)) == ["somefile"]


def test_compares_plot_in_the_first_workdir_is_listed_and_never_a_users(runs_root, tmp_path,
                                                                        capsys):
    first = shutil.copytree(runs_root / "a", tmp_path / "a")
    assert main(["compare", str(first), str(runs_root / "b")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(first / "plots" / "compare.png")
    assert {"plots/", "plots/compare.png"} <= OwnedFolder(first).written()
    (first / LEDGER).unlink()  # the picture is now nobody's that digitsjax knows of
    assert main(["compare", str(first), str(runs_root / "b")]) == 2
    assert "plots/compare.png exists and digitsjax did not write it" in capsys.readouterr().err


def test_a_comparison_the_filesystem_refuses_is_one_line_and_leaves_nothing(
        runs_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "replace", refusing_writes_of(".png"))
    output = tmp_path / "compare.png"
    assert compare_cli(runs_root, "--output", str(output)) == 2
    assert capsys.readouterr().err == (
        f"digitsjax: error: cannot write {output} (Read-only file system); free space or make "
        "it writable, or choose another place\n")
    assert list(tmp_path.iterdir()) == []


# Damaged runs: a manifest or records digitsjax would not write, among runs that are fine.
def _manifest_without_train(manifest: dict) -> dict:
    del manifest["pipeline"]["train"]
    return manifest


def _epochs_as_text(manifest: dict) -> dict:
    manifest["pipeline"]["train"]["epochs"] = "2"
    return manifest


def _result_as_text(manifest: dict) -> dict:
    return manifest | {"result": "finished"}


DAMAGED_MANIFESTS = {
    "no-train": (_manifest_without_train, "its pipeline has no train table"),
    "text-epochs": (_epochs_as_text, "its pipeline's train.epochs is not a whole number"),
    "text-result": (_result_as_text, "its result is not a table"),
}


@pytest.fixture(scope="module")
def damaged_root(runs_root, tmp_path_factory):
    """Two sound runs around three damaged manifests and one damaged record."""
    root = tmp_path_factory.mktemp("damaged")
    for name in ("a", *DAMAGED_MANIFESTS, "odd-record", "z"):
        shutil.copytree(runs_root / "a", root / name)
    for name, (damage, _) in DAMAGED_MANIFESTS.items():
        manifest = json.loads((root / name / MANIFEST).read_text())
        (root / name / MANIFEST).write_text(json.dumps(damage(manifest)))
    with open(root / "odd-record" / METRICS, "a") as f:
        f.write(json.dumps({"step": 900, "epoch": "three", "val_accuracy": "high"}) + "\n")
    return root


def test_runs_lists_every_readable_run_and_says_in_one_line_why_each_other_is_not(
        damaged_root, capsys):
    """Exit status 2: a script sees that some runs are missing from the table."""
    assert main(["runs", str(damaged_root)]) == 2
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["a", "z"]
    errors = err.splitlines()
    assert len(errors) == len(DAMAGED_MANIFESTS) + 1
    by_run = {Path(line.split()[2]).relative_to(damaged_root).parts[0]: line for line in errors}
    assert sorted(by_run) == sorted([*DAMAGED_MANIFESTS, "odd-record"])
    for name, (_, why) in DAMAGED_MANIFESTS.items():
        assert by_run[name].startswith(f"digitsjax: error: {damaged_root / name / MANIFEST} ")
        assert why in by_run[name] and "retrain with --restart" in by_run[name]
    assert by_run["odd-record"].startswith(
        f"digitsjax: error: {damaged_root / 'odd-record' / METRICS} holds records that "
        "digitsjax does not write (")


@pytest.mark.parametrize("name", [*DAMAGED_MANIFESTS, "odd-record"])
def test_compare_refuses_a_damaged_run_in_one_line_naming_it(damaged_root, tmp_path, capsys,
                                                             name):
    plot = tmp_path / "compare.png"
    assert main(["compare", str(damaged_root / "a"), str(damaged_root / name),
                 "--output", str(plot)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"digitsjax: error: {damaged_root / name}/")
    assert not plot.exists()


def test_runs_on_one_damaged_workdir_is_one_line(damaged_root, capsys):
    assert main(["runs", str(damaged_root / "no-train")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith(f"digitsjax: error: {damaged_root / 'no-train' / MANIFEST} ")
