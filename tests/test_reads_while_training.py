"""A network read while a run trains its workdir: the run saves a checkpoint and deletes the
oldest (`checkpoint.keep`) while the reader lists and reads them. A checkpoint that changed
under the reader is read again from the newest, a few times at most; a read that still fails
while the run holds the workdir says so, and never advises discarding the healthy run."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import time

import pytest

from digitsjax.errors import RESTART, CheckpointError
from digitsjax.run import checkpoint
from digitsjax.run.lock import workdir_lock
from digitsjax.run.trained import load_network

from .conftest import REPO, TINY, train_mnist_mlp
from .training_processes import saved_steps


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, mnist_dir):
    """A TINY run of three epochs: checkpoints at steps 10, 20 and 30."""
    return train_mnist_mlp(tmp_path_factory.mktemp("three"), (*TINY, "train.epochs=3"),
                           mnist_dir)


@pytest.fixture
def workdir(three_checkpoints, tmp_path):
    return shutil.copytree(three_checkpoints, tmp_path / "run")


def step_folder(workdir, step: int):
    return checkpoint.checkpoint_dir(workdir) / str(step)


def test_a_checkpoint_deleted_while_it_is_read_is_read_again_from_the_newest(
        workdir, tmp_path, monkeypatch):
    """With `keep = 1`: the reader lists one step and starts reading it; meanwhile the run
    completes the next one and its retention deletes the one being read, file by file (the
    folder is still there, its `meta` already gone)."""
    *_, older, newest = saved_steps(workdir)
    for step in saved_steps(workdir)[:-2]:
        shutil.rmtree(step_folder(workdir, step))
    being_written = tmp_path / "being-written"
    shutil.move(step_folder(workdir, newest), being_written)
    real_restore = checkpoint.restore

    def training_saves_and_deletes_meanwhile(manager, step, like_state):
        if step == older:
            shutil.move(being_written, step_folder(workdir, newest))
            shutil.rmtree(step_folder(workdir, older) / "meta")
        return real_restore(manager, step, like_state)

    monkeypatch.setattr(checkpoint, "restore", training_saves_and_deletes_meanwhile)
    assert load_network(workdir).step == newest


def test_a_step_that_vanishes_while_the_steps_are_listed_is_listed_again(workdir, monkeypatch):
    """Orbax lists the step folders, then reads each one's metadata: a step deleted between
    the two is a FileNotFoundError from inside orbax (as a real training's retention made it)."""
    *_, older, newest = saved_steps(workdir)
    real_open, opened = checkpoint.open_manager, []

    def listed_then_deleted(*args, **kwargs):
        opened.append(1)
        if len(opened) == 1:
            shutil.rmtree(step_folder(workdir, older))
            raise FileNotFoundError(2, "No such file or directory",
                                    str(step_folder(workdir, older)))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "open_manager", listed_then_deleted)
    assert load_network(workdir).step == newest
    assert len(opened) == 2


def test_a_listing_that_finds_no_step_while_the_run_renames_them_is_listed_again(
        workdir, tmp_path, monkeypatch):
    """Orbax can list the folder in the instant between the run's deletion of its one kept
    step and the rename of the next one into place (`keep = 1`): an empty listing of a workdir
    that held checkpoints is read again, not reported as "train first"."""
    real_open, opened = checkpoint.open_manager, []
    steps = saved_steps(workdir)
    aside = tmp_path / "aside"
    aside.mkdir()

    def listed_while_none_was_in_place(*args, **kwargs):
        opened.append(1)
        if len(opened) > 1:
            return real_open(*args, **kwargs)
        for step in steps:
            shutil.move(step_folder(workdir, step), aside / str(step))
        try:
            return real_open(*args, **kwargs)
        finally:
            for step in steps:
                shutil.move(aside / str(step), step_folder(workdir, step))

    monkeypatch.setattr(checkpoint, "open_manager", listed_while_none_was_in_place)
    assert load_network(workdir).step == steps[-1]
    assert len(opened) == 2


def damage(folder) -> None:
    for path in (folder / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 1000:
            path.write_bytes(b"\0" * path.stat().st_size)


def test_an_unreadable_checkpoint_of_a_workdir_being_trained_says_to_try_again(workdir):
    """The run that holds the workdir is writing and deleting its checkpoints: what the reader
    saw may be its work in progress, so the fix is to read again, never to discard the run."""
    *older, newest = saved_steps(workdir)
    for step in older:
        shutil.rmtree(step_folder(workdir, step))
    damage(step_folder(workdir, newest))
    with workdir_lock(workdir, notice=print), pytest.raises(CheckpointError) as error:
        load_network(workdir)
    assert RESTART not in error.value.fix
    assert f"is being trained by pid {os.getpid()} on " in error.value.problem
    assert error.value.fix.startswith("try again")
    assert saved_steps(workdir) == [newest]  # nothing moved or deleted by a reader


def test_an_unreadable_checkpoint_of_an_idle_workdir_is_still_reported_as_damage(workdir):
    *older, newest = saved_steps(workdir)
    for step in older:
        shutil.rmtree(step_folder(workdir, step))
    damage(step_folder(workdir, newest))
    with pytest.raises(CheckpointError) as error:
        load_network(workdir)
    assert "is damaged" in error.value.problem and RESTART in error.value.fix


@pytest.mark.slow
def test_reads_in_a_loop_while_a_real_run_saves_and_deletes_every_other_step(tmp_path):
    """The race as it happens: a `keep = 1` run saving every 2 steps, read back for a few
    seconds; every read returns a network, none reports damage."""
    workdir = tmp_path / "run"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "digitsjax", "train", str(REPO / "pipelines" / "mnist_mlp.toml"),
         "--workdir", str(workdir), *(f"--set={o}" for o in TINY), "--set=train.epochs=1000",
         "--set=checkpoint.every_steps=2", "--set=checkpoint.keep=1",
         "--set=checkpoint.keep_best=false"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not saved_steps(workdir):
            assert trainer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        reads, steps, until = 0, set(), time.monotonic() + 6
        while time.monotonic() < until:
            steps.add(load_network(workdir).step)
            reads += 1
        assert trainer.poll() is None  # it trained all along
    finally:
        trainer.kill()
        trainer.wait()
    assert len(steps) > reads / 2  # the run saved (and deleted) between most reads


def test_the_reads_a_failed_restore_abandons_log_nothing_when_they_fail_later(caplog):
    """A read that met a deleted file leaves tensorstore's other reads unawaited; asyncio would
    log each one's failure as it is collected, under a network that was then read fine."""
    checkpoint._quiet_abandoned_io()  # as every restore does first
    loop = asyncio.new_event_loop()
    for error in (ValueError('FAILED_PRECONDITION: Error reading "params.0.w/0.0" in OCDBT '
                             'database at local file "run/checkpoints/12/state/": Truncated'),
                  ValueError("an unawaited failure of someone else's")):
        loop.create_future().set_exception(error)
        gc.collect()
    loop.close()
    assert "someone else's" in caplog.text
    assert "OCDBT" not in caplog.text
