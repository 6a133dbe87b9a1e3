"""Interrupt real training processes with real signals; the resumed run must end bit for bit
where the uninterrupted `small_run` ends, with the same per-epoch metrics."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.main import main
from digitsjax.run import checkpoint
from digitsjax.run.records import read_metrics
from digitsjax.run.workdir import MANIFEST, Workdir

from . import training_processes
from .conftest import REPO, SMALL_RUN, run_cli
from .training_processes import (
    comparable,
    finished_epochs,
    freeze,
    saved_steps,
    saves_in_progress,
    start_training,
    wait_until,
)

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
SMALL = load_pipeline(PIPELINE, SMALL_RUN)
SPE = SMALL.steps_per_epoch


def train_args(workdir: Path, *overrides: str) -> list[str]:
    sets = [f"--set={s}" for s in (*SMALL_RUN, *overrides)]
    return ["train", str(PIPELINE), "--workdir", str(workdir), *sets]


def start_run(workdir: Path, log: Path) -> subprocess.Popen:
    return start_training(train_args(workdir), log)


def fingerprint(workdir: Path) -> str:
    return training_processes.fingerprint(workdir, SMALL.total_steps)


def assert_same_as_uninterrupted(workdir: Path, reference: Path) -> None:
    assert fingerprint(workdir) == fingerprint(reference)
    assert comparable(workdir) == comparable(reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_mid_epoch_checkpoints_and_exits_and_rerunning_continues_exactly(
        tmp_path, small_run, signum, capsys):
    workdir, log = tmp_path / "run", tmp_path / "log"
    proc = start_run(workdir, log)
    wait_until(lambda: finished_epochs(workdir) == 1, proc)  # now early in epoch 2
    sent = time.monotonic()
    proc.send_signal(signum)
    proc.wait(timeout=120)
    seconds = time.monotonic() - sent

    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
    message = log.read_text().splitlines()[-1]
    stopped = re.fullmatch(rf"digitsjax: stopped by {signum.name} at step (\d+), which is "
                           "checkpointed; run the same command again to continue", message)
    stopped_at = int(stopped[1])
    assert SPE < stopped_at < 2 * SPE  # inside epoch 2, not at its end
    assert saved_steps(workdir)[-1] == stopped_at and not saves_in_progress(workdir)
    assert seconds < 60, f"took {seconds:.1f} s from {signum.name} to exit"

    if signum == signal.SIGTERM:  # as a user would: the same command, in a fresh process
        resumed = run_cli(*train_args(workdir))
        assert resumed.returncode == 0, resumed.stderr
        output = resumed.stdout
    else:  # the same code without another interpreter start, to keep the suite fast
        assert main(train_args(workdir)) == 0
        output = capsys.readouterr().out
    assert f"resuming {workdir} from step {stopped_at} " in output
    assert_same_as_uninterrupted(workdir, small_run)


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_only_the_work_since_the_last_complete_checkpoint(
        tmp_path, small_run, capsys):
    workdir, log = tmp_path / "run", tmp_path / "log"

    # 1. Killed before its first checkpoint: the next run starts over.
    proc = start_run(workdir, log)
    wait_until(lambda: (workdir / MANIFEST).exists(), proc)
    proc.kill()
    proc.wait()
    assert saved_steps(workdir) == []

    # 2. Killed while a checkpoint is being written: frozen (SIGSTOP) while orbax's temporary
    # directory exists, so the SIGKILL lands mid-save, never after the rename.
    proc = start_run(workdir, log)
    killed_save = None
    while killed_save is None:
        wait_until(lambda: any(int(name.split(".")[0]) > SPE
                               for name in saves_in_progress(workdir)), proc)
        freeze(proc)
        pending = [n for n in saves_in_progress(workdir) if int(n.split(".")[0]) > SPE]
        if pending:
            killed_save = int(pending[0].split(".")[0])
        else:  # the save completed between the look and the stop: catch the next one
            proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait()
    complete = saved_steps(workdir)
    assert killed_save not in complete and complete[-1] < killed_save

    # 3. Resumes from the last complete checkpoint; the debris is cleaned up. Killed again
    # between two saves.
    proc = start_run(workdir, log)
    wait_until(lambda: saved_steps(workdir)[-1] > killed_save, proc)
    assert not any(n.startswith(f"{killed_save}.") for n in saves_in_progress(workdir))
    proc.kill()
    proc.wait()
    last_complete = saved_steps(workdir)[-1]

    # 4. Runs to the end from there.
    assert main(train_args(workdir)) == 0
    resumed_from = re.findall(r"resuming .* from step (\d+) ",
                              log.read_text() + capsys.readouterr().out)
    assert [int(s) for s in resumed_from] == [complete[-1], last_complete]
    assert_same_as_uninterrupted(workdir, small_run)


def snapshot(workdir: Path) -> dict[str, str]:
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(workdir.rglob("*")) if p.is_file()}


def test_a_different_pipeline_is_refused_without_touching_the_workdir_and_restart_starts_over(
        tmp_path, small_run, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    before = snapshot(workdir)

    status = main(train_args(workdir, "seed=1", "model.hidden=[16]"))

    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert "model.hidden: [32] -> [16]" in error and "seed: 0 -> 1" in error
    assert "--restart" in error and "--workdir" in error
    assert snapshot(workdir) == before

    assert main([*train_args(workdir, "seed=1", "train.epochs=1"), "--restart"]) == 0
    assert "resuming" not in capsys.readouterr().out
    assert Workdir.open(workdir).pipeline.seed == 1
    assert max(saved_steps(workdir)) == SPE and [r["epoch"] for r in read_metrics(workdir)] == [1]


def test_rerunning_a_finished_workdir_changes_nothing(tmp_path, small_run, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    before = snapshot(workdir)
    assert main(train_args(workdir)) == 0
    assert f"is already trained ({2 * SPE} steps); pass --restart to train again" in \
        capsys.readouterr().out  # the remedy spelled as the command line spells it
    assert snapshot(workdir) == before


def test_a_changed_checkpoint_cadence_is_not_a_different_pipeline(tmp_path, small_run, capsys):
    """Cadence does not change the params, so resuming with another one is allowed. It does
    regroup the float32 per-chunk loss sums of the epoch it changes in: that epoch's train_loss
    may differ in its last digits (measured: 7e-8 relative), every other number is identical."""
    workdir = tmp_path / "run"
    shutil.copytree(small_run, workdir)
    *_, resume_from, later, last = saved_steps(workdir)
    for step in (later, last):
        shutil.rmtree(checkpoint.checkpoint_dir(workdir) / str(step))
    assert main(train_args(workdir, "checkpoint.every_steps=0")) == 0  # one chunk to the end
    assert f"from step {resume_from} " in capsys.readouterr().out
    assert fingerprint(workdir) == fingerprint(small_run)
    changed_epoch = resume_from // SPE + 1
    got, expected = comparable(workdir), comparable(small_run)
    for record in (*got, *expected):
        if record["epoch"] == changed_epoch:
            record["train_loss"] = pytest.approx(record["train_loss"], rel=1e-6)
    assert got == expected


def test_evaluate_reads_the_latest_the_best_or_a_given_step(small_run, capsys):
    best = max(read_metrics(small_run), key=lambda r: (r["val_accuracy"], r["step"]))
    for which, step in [("latest", SMALL.total_steps), ("best", best["step"]),
                        (str(saved_steps(small_run)[0]), saved_steps(small_run)[0])]:
        assert main(["evaluate", str(small_run), "--checkpoint", which, "--json"]) == 0
        assert f'"step": {step},' in capsys.readouterr().out
    assert main(["evaluate", str(small_run), "--checkpoint", "7"]) == 2
    assert f"saved steps {saved_steps(small_run)}" in capsys.readouterr().err
