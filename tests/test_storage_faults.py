"""A full disk or a read-only workdir while saving: one clear error, earlier checkpoints intact,
and the run continues to the uninterrupted fingerprint once there is room again.

The faults are real: the workdir is a small tmpfs (ENOSPC), or its checkpoints folder becomes
a read-only bind mount (EROFS) while the trainer is paused between two saves. Mounting needs
root, as on the CI machines.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digitsjax.core.config import load_pipeline

from .conftest import REPO, SMALL_RUN, run_cli
from .training_processes import fingerprint, saved_steps

PIPELINE = str(REPO / "pipelines" / "mnist_mlp.toml")
SMALL_STEPS = load_pipeline(PIPELINE, SMALL_RUN).total_steps
TRAIN = ["train", PIPELINE, *(arg for kv in SMALL_RUN for arg in ("--set", kv))]


@pytest.fixture
def mounts(tmp_path):
    """`mounts.tmpfs(kib)` mounts a small filesystem; `mounts.read_only(folder)` freezes one
    folder with a read-only bind mount. Everything is unmounted afterwards."""
    mounted: list[Path] = []

    def mount(*args: str) -> None:
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here (needs root): {result.stderr.strip()}")
        mounted.append(Path(args[-1]))

    class Mounts:
        @staticmethod
        def tmpfs(size_kib: int) -> Path:
            target = tmp_path / f"tmpfs{len(mounted)}"
            target.mkdir()
            mount("-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(target))
            return target

        @staticmethod
        def read_only(folder: Path) -> None:
            mount("--bind", str(folder), str(folder))
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)

        @staticmethod
        def resize(target: Path, size: str) -> None:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(target)], check=True)

        @staticmethod
        def unmount(target: Path) -> None:
            subprocess.run(["umount", str(target)], check=True)
            mounted.remove(target)

    yield Mounts
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], check=False)


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("digitsjax: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_a_full_disk_stops_with_one_line_and_the_run_continues_once_there_is_room(
        mounts, small_run):
    mount = mounts.tmpfs(1024)  # room for a few of its checkpoints (0.3 MiB each), not all
    workdir = mount / "run"
    out = run_cli(*TRAIN, "--workdir", str(workdir))
    assert out.returncode == 2
    assert_one_line_error(out.stderr, "No space left on device", "are intact",
                          "run the same command again to continue")
    saved = saved_steps(workdir)
    assert saved and saved[-1] < 858  # it stopped early, and kept what it had saved
    assert f"the checkpoints {saved} are intact" in out.stderr

    mounts.resize(mount, "8m")
    out = run_cli(*TRAIN, "--workdir", str(workdir))
    assert out.returncode == 0, out.stderr
    assert f"from step {saved[-1]}" in out.stdout
    assert fingerprint(workdir, SMALL_STEPS) == fingerprint(small_run, SMALL_STEPS)


def test_checkpoints_turned_read_only_while_training_stop_cleanly(mounts, tmp_path, small_run):
    workdir = tmp_path / "run"
    checkpoints = workdir / "checkpoints"
    trainer = subprocess.Popen([sys.executable, "-m", "digitsjax", *TRAIN, "--workdir",
                                str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 120
    while not (checkpoints / "143").is_dir():  # the first save has completed
        assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()
        time.sleep(0.005)
    os.kill(trainer.pid, signal.SIGSTOP)  # between two saves: freeze the folder under it
    try:
        before = saved_steps(workdir)
        mounts.read_only(checkpoints)
    finally:
        os.kill(trainer.pid, signal.SIGCONT)
    _, stderr = trainer.communicate(timeout=120)
    assert trainer.returncode == 2
    # "not writable" when the next save finds the folder read-only, "Read-only file system"
    # when the save in flight hits it: either way one line, and the checkpoints are kept.
    assert_one_line_error(stderr, "could not write a checkpoint", "are intact")
    assert "not writable" in stderr or "Read-only file system" in stderr
    assert saved_steps(workdir) == before  # nothing lost, nothing half-written

    mounts.unmount(checkpoints)
    out = run_cli(*TRAIN, "--workdir", str(workdir))
    assert out.returncode == 0, out.stderr
    assert fingerprint(workdir, SMALL_STEPS) == fingerprint(small_run, SMALL_STEPS)


def test_a_full_disk_when_the_lock_names_its_holder_is_one_line(mounts):
    from digitsjax.errors import UserError
    from digitsjax.files import OwnedFolder
    from digitsjax.run.lock import LOCK, workdir_lock

    workdir = mounts.tmpfs(64) / "run"
    workdir.mkdir()
    OwnedFolder(workdir).record(LOCK)
    (workdir / LOCK).touch()
    _fill(workdir.parent)
    with pytest.raises(UserError, match=r"No space left on device"), \
            workdir_lock(workdir, notice=print):
        pass


def _fill(folder: Path) -> None:
    """Write into `folder` until its filesystem is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_during_the_final_checkpoint_is_one_error_and_the_earlier_ones_stand(
        mounts, monkeypatch, mnist_dir):
    """The disk fills up (as by another process) once the last save's room was checked:
    tensorstore fails writing it, and the run's final wait reports that as one error."""
    from digitsjax.errors import CheckpointError
    from digitsjax.run import checkpoint
    from digitsjax.run.loop import train_pipeline

    from .conftest import TINY

    workdir = mounts.tmpfs(2048) / "run"
    pipeline = load_pipeline(PIPELINE, [*TINY, "train.epochs=2"])
    check_room = checkpoint._check_room

    def fill_before_the_last(manager, state):
        check_room(manager, state)
        if int(state["step"]) == pipeline.total_steps:
            manager.wait_until_finished()  # the save before is complete
            _fill(workdir.parent)

    monkeypatch.setattr(checkpoint, "_check_room", fill_before_the_last)
    with pytest.raises(CheckpointError) as error:
        train_pipeline(pipeline, workdir, mnist_dir=str(mnist_dir), echo=lambda _: None)
    assert error.value.problem == (
        f"could not write a checkpoint in {workdir / 'checkpoints'} (No space left on device); "
        "the checkpoints [10] are intact")
    assert saved_steps(workdir) == [10]


def test_a_failed_last_save_reported_by_the_final_wait_is_one_error(monkeypatch, mnist_dir,
                                                                    tmp_path):
    """Orbax reports a failed async save at the next wait: for the last save, the run's final
    one, in tensorstore's words (RESOURCE_EXHAUSTED, without an OS error code)."""
    import orbax.checkpoint as ocp

    from digitsjax.errors import CheckpointError
    from digitsjax.run.loop import train_pipeline

    from .conftest import TINY

    pipeline = load_pipeline(PIPELINE, [*TINY, "train.epochs=1"])
    real_wait, reported = ocp.CheckpointManager.wait_until_finished, []

    def wait_reporting_once(manager):
        real_wait(manager)
        if manager.latest_step() == pipeline.total_steps and not reported:
            reported.append(True)  # orbax reports a failure once
            raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "d/1f2e": No space '
                             'left on device')

    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait_reporting_once)
    with pytest.raises(CheckpointError) as error:
        train_pipeline(pipeline, tmp_path / "run", mnist_dir=str(mnist_dir), echo=lambda _: None)
    assert "could not write a checkpoint in " in error.value.problem
    assert "(No space left on device)" in error.value.problem
