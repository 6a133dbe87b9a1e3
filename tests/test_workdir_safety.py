"""The user's files are sacred: one writer per workdir, `--restart` deletes only what runs wrote,
a run that cannot fit is refused before anything is allocated or written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.core.footprint import footprint, peak_bytes
from digitsjax.core.program import model_groups
from digitsjax.errors import CheckpointError
from digitsjax.files import LEDGER
from digitsjax.run import checkpoint
from digitsjax.run.lock import LOCK, workdir_lock
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network

from . import conftest
from .conftest import REPO, SMALL_RUN, run_cli

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
TINY = (*conftest.TINY, "train.epochs=1")


def train(workdir, *options: str, overrides=TINY):
    return run_cli("train", str(PIPELINE), "--workdir", str(workdir), *options,
                   *(f"--set={o}" for o in overrides))


def files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_second_training_of_a_busy_workdir_is_refused_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with workdir_lock(workdir, notice=print):
        refused = train(workdir)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1].startswith(
        f"digitsjax: error: {workdir} is being trained by pid {os.getpid()} on "
        f"{socket.gethostname()} since ")
    assert "wait for it to finish, or choose another with --workdir" in refused.stderr
    assert sorted(p.name for p in workdir.iterdir()) == [LEDGER, LOCK]  # nothing written
    assert train(workdir).returncode == 0  # released: the next run goes ahead


HOLD_AND_DIE = """
import sys, time
from pathlib import Path
from digitsjax.run.lock import workdir_lock
with workdir_lock(Path(sys.argv[1]), notice=print):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_notice(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_DIE, str(workdir)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert train(workdir).returncode == 2  # alive: refused
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    again = train(workdir)
    assert again.returncode == 0, again.stderr
    assert f"notice: {workdir} was last trained by pid {holder.pid} on " in again.stdout
    assert "which ended without releasing it; taking it over" in again.stdout
    assert read_metrics(workdir)[-1]["epoch"] == 1


def test_a_folder_that_is_not_a_workdir_is_never_written_or_emptied(tmp_path):
    """As `--workdir .` in a repository whose checkpoints/ holds other runs."""
    folder = tmp_path / "project"
    (folder / "checkpoints" / "other_run").mkdir(parents=True)
    (folder / "checkpoints" / "other_run" / "manifest.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    for options in ((), ("--restart",)):
        assert_refused_changing_nothing(folder, options, (
            f"{folder} is not a digitsjax workdir (it has no manifest.json) and holds files "
            "(notes.txt, checkpoints/other_run); train into a new or empty folder: choose one "
            "with --workdir"))


def assert_refused_changing_nothing(folder, options, message: str) -> None:
    before = files(folder)
    refused = train(folder, *options)
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[-1] == f"digitsjax: error: {message}"
    assert files(folder) == before


def test_restart_refuses_a_workdir_holding_files_no_run_wrote(tmp_path):
    workdir = tmp_path / "run"
    assert train(workdir).returncode == 0
    (checkpoint.checkpoint_dir(workdir) / "my-notes.txt").write_text("keep me")
    assert_refused_changing_nothing(workdir, ("--restart",), (
        f"{workdir} holds files that no run wrote (checkpoints/my-notes.txt), which a restart "
        "would delete; move them away first, or choose another with --workdir"))


def test_restart_of_a_workdir_removes_its_runs_files_and_keeps_the_users(tmp_path):
    workdir = tmp_path / "run"
    assert train(workdir).returncode == 0
    (workdir / "notes.txt").write_text("mine")
    assert train(workdir, "--restart", overrides=(*TINY, "seed=1")).returncode == 0
    assert (workdir / "notes.txt").read_text() == "mine"
    assert json.loads((workdir / "manifest.json").read_text())["pipeline"]["seed"] == 1


def test_an_empty_existing_folder_is_a_fine_workdir(tmp_path):
    assert train(tmp_path).returncode == 0


@pytest.mark.parametrize(("overrides", "largest", "lower"), [
    (("train.num_models=10000",), "an evaluation", "train.num_models or model.hidden"),
    (("model.hidden=[65536, 65536]",), "the parameters and optimizer state",
     "model.hidden or train.num_models"),
])
def test_a_run_too_large_for_the_machine_is_refused_before_allocating_or_writing(
        tmp_path, overrides, largest, lower):
    workdir = tmp_path / "run"
    refused = train(workdir, overrides=overrides)
    assert refused.returncode == 2
    line = refused.stderr.splitlines()[-1]
    assert line.startswith("digitsjax: error: this run needs about ")
    assert f" GB for {largest}), more than the " in line and line.endswith(f"; lower {lower}")
    assert not workdir.exists()


def test_the_estimate_grows_with_what_a_run_holds():
    base = load_pipeline(PIPELINE)
    parts = footprint(base)
    assert parts["MNIST"] == 70_000 * 784 * 4
    wider = footprint(load_pipeline(PIPELINE, ["model.hidden=[256, 64]"]))
    assert wider["the parameters and optimizer state"] > parts["the parameters and optimizer state"]
    ten_models = load_pipeline(PIPELINE, ["train.num_models=10"])
    ten = footprint(ten_models)
    for part in ("a training step", "an evaluation"):
        assert ten[part] == 10 * parts[part]
    state = parts["the parameters and optimizer state"]
    grouped = len(model_groups(10)) > 1  # the groups' states are joined into a new one
    assert ten["the parameters and optimizer state"] == (2 if grouped else 1) * 10 * state
    sgd = footprint(load_pipeline(PIPELINE, ["optimizer.name=sgd"]))  # no slots: params only
    assert parts["the parameters and optimizer state"] > sgd["the parameters and optimizer state"]
    assert peak_bytes(parts) < 2 * 2**30  # mnist_mlp fits in a small container
    sweep = footprint(ten_models, sweep=True)  # ten grid points in one program
    assert sweep["the parameters and optimizer state"] == \
        2 * 10 * state  # a chunk keeps the state it started from


def test_a_refusal_leaves_no_workdir_behind(tmp_path):
    """MNIST that cannot be prepared is found out before the workdir is made."""
    workdir, empty = tmp_path / "run", tmp_path / "no-tfds-data"
    refused = train(workdir, "--mnist-dir", str(tmp_path / "nowhere"),
                    overrides=(*TINY, f"data.tfds_data_dir='{empty}'"))
    assert refused.returncode == 2, refused.stdout
    assert not workdir.exists()


def test_reading_a_checkpoint_a_training_deletes_meanwhile_reads_the_newer_one(
        small_run, tmp_path, monkeypatch):
    """As `digitsjax evaluate` while a run with `checkpoint.keep = 1` saves its next one."""
    workdir = shutil.copytree(small_run, tmp_path / "run")
    steps = sorted(int(p.name) for p in checkpoint.checkpoint_dir(workdir).iterdir()
                   if p.name.isdigit())
    newest, older = steps[-1], steps[-2]
    hidden = tmp_path / "being-written"
    shutil.move(checkpoint.checkpoint_dir(workdir) / str(newest), hidden)
    real_restore = checkpoint.restore

    def training_saves_meanwhile(manager, step, like_state):
        if step == older:  # the newer save completes and the older one is deleted
            shutil.move(hidden, checkpoint.checkpoint_dir(workdir) / str(newest))
            shutil.rmtree(checkpoint.checkpoint_dir(workdir) / str(older))
        return real_restore(manager, step, like_state)

    monkeypatch.setattr(checkpoint, "restore", training_saves_meanwhile)
    assert load_network(workdir).step == newest


def test_a_damaged_checkpoint_that_is_still_there_is_reported_not_retried(small_run, tmp_path):
    workdir = shutil.copytree(small_run, tmp_path / "run")
    newest = max(int(p.name) for p in checkpoint.checkpoint_dir(workdir).iterdir()
                 if p.name.isdigit())
    for path in (checkpoint.checkpoint_dir(workdir) / str(newest) / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(b"\0" * path.stat().st_size)
    with pytest.raises(CheckpointError) as error:
        load_network(workdir)
    assert f"checkpoint {newest} in " in error.value.problem


def test_the_end_of_training_names_the_best_epoch_beside_the_last(tmp_path):
    done = run_cli("train", str(PIPELINE), "--workdir", str(tmp_path),
                   *(f"--set={o}" for o in (*SMALL_RUN, "train.epochs=3")))
    assert done.returncode == 0, done.stderr
    records = read_metrics(tmp_path)
    best = max(records, key=lambda r: (r["val_accuracy"], r["step"]))
    last_line = done.stdout.splitlines()[-1]
    assert last_line.startswith(
        f"best by validation: epoch {best['epoch']} ({100 * best['val_accuracy']:.2f}%), "
        f"test {100 * best['test_accuracy']:.2f}%; last: epoch 3 "
        f"({100 * records[-1]['val_accuracy']:.2f}%)")


CONSTANT = (*conftest.TINY, "optimizer.schedule=constant")


def test_a_finished_run_with_a_constant_schedule_continues_to_more_epochs_exactly(tmp_path):
    from digitsjax.apps.verify import verify_workdir
    from digitsjax.run.loop import train_pipeline
    from digitsjax.run.workdir import Workdir

    extended, direct = tmp_path / "extended", tmp_path / "direct"
    train_pipeline(load_pipeline(PIPELINE, [*CONSTANT, "train.epochs=2"]), extended,
                   echo=lambda _: None)
    lines: list[str] = []
    longer = load_pipeline(PIPELINE, [*CONSTANT, "train.epochs=4"])
    result = train_pipeline(longer, extended, echo=lines.append)
    assert "resuming" in lines[1] and lines[2] == "extended to 4 epochs"
    assert [r["epoch"] for r in read_metrics(extended)] == [1, 2, 3, 4]
    assert result["params_sha256"] == train_pipeline(longer, direct, echo=lambda _: None)[
        "params_sha256"]
    manifest = json.loads((extended / "manifest.json").read_text())
    assert manifest["pipeline"]["train"]["epochs"] == 4
    assert [(e["from_epochs"], e["to_epochs"], e["at_step"]) for e in manifest["extensions"]] \
        == [(2, 4, 20)]
    assert verify_workdir(Workdir.open(extended), echo=lambda _: None).reproduced


@pytest.mark.parametrize(("first", "then", "reason"), [
    (TINY, (*TINY, "train.epochs=2"),
     "cannot be extended from 1 to 2 epochs: its cosine schedule is defined over the run's "
     "total steps, so the longer run differs from its first step"),
    ((*CONSTANT, "train.epochs=2"), (*CONSTANT, "train.epochs=1"),
     "is a run of 2 epochs; train.epochs = 1 would end before its checkpoints"),
])
def test_an_extension_that_would_change_the_run_is_refused_with_the_reason(
        tmp_path, first, then, reason):
    from digitsjax.run.loop import train_pipeline

    train_pipeline(load_pipeline(PIPELINE, first), tmp_path, echo=lambda _: None)
    before = files(tmp_path)
    with pytest.raises(CheckpointError) as error:
        train_pipeline(load_pipeline(PIPELINE, then), tmp_path, echo=lambda _: None)
    assert error.value.problem == f"{tmp_path} {reason}"
    assert "restart=True to train" in str(error.value)
    assert files(tmp_path) == before


def test_train_given_a_workdir_continues_it_with_its_own_pipeline(tmp_path):
    workdir = tmp_path / "run"
    assert train(workdir, overrides=(*CONSTANT, "train.epochs=1")).returncode == 0
    more = run_cli("train", str(workdir), "--set", "train.epochs=2")
    assert more.returncode == 0, more.stderr
    assert "extended to 2 epochs" in more.stdout
    assert [r["epoch"] for r in read_metrics(workdir)] == [1, 2]
    assert json.loads((workdir / "manifest.json").read_text())["pipeline"]["model"][
        "hidden"] == [16]  # the workdir's pipeline, not the file's


def test_what_a_run_killed_while_proving_a_new_folder_writable_left_does_not_refuse_it(
        tmp_path):
    """A SIGKILL between the probe's creation and its removal (where the system has no
    unnamed files) leaves an empty probe: the folder is still a new workdir, and a file of the
    user's under that name is still the user's."""
    from digitsjax.run.workdir import WRITE_PROBE, prepared_workdir

    left = tmp_path / "left"
    left.mkdir()
    (left / f"{WRITE_PROBE}k1ll3d").touch()
    with prepared_workdir(left, False, print) as workdir:
        assert workdir.manifest is None
    assert (left / f"{WRITE_PROBE}k1ll3d").exists()  # not ours to delete
    users = tmp_path / "users"
    users.mkdir()
    (users / f"{WRITE_PROBE}notes").write_text("mine")
    with pytest.raises(CheckpointError, match="holds files"), \
            prepared_workdir(users, False, print):
        pass
