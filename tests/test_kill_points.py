"""SIGKILL one run at twenty moments spread over starting, training and saving, resuming after
each: every kill loses only the work since the last complete checkpoint, the workdir always
resumes, and the run ends bit for bit where the uninterrupted run ends.

The moments come from a seeded schedule over the whole run: a random time during start-up
(imports, data, restore, compile), a random time after the checkpoint at a target step
(training, evaluation, the metrics append, the next save), or the middle of the save at a
target step (the process frozen while orbax's temporary folder exists, then killed), epoch ends
and the final chunk included. One workdir takes all the kills in turn, so twenty
kills cost twenty process starts.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.run.loop import train_pipeline

from .conftest import REPO
from .training_processes import (
    comparable,
    fingerprint,
    freeze,
    saved_steps,
    saves_in_progress,
    start_training,
    wait_until,
)

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
# 3 epochs of 429 steps with a checkpoint every 33: 39 saves, one chunk length (one compile).
TINY_RUN = ("model.hidden=[16]", "train.epochs=3", "checkpoint.every_steps=33")
TINY = load_pipeline(PIPELINE, TINY_RUN)
EVERY = TINY.checkpoint.every_steps
KILLS = 20
SEED = 7

pytestmark = pytest.mark.slow


def train_args(workdir: Path) -> list[str]:
    return ["train", str(PIPELINE), "--workdir", str(workdir),
            *(f"--set={s}" for s in TINY_RUN)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_dir) -> Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train_pipeline(TINY, workdir, mnist_dir=str(mnist_dir), echo=lambda _: None)
    return workdir


def last_complete(workdir: Path) -> int:
    return max(saved_steps(workdir), default=0)


def step_of(tmp_name: str) -> int:
    return int(tmp_name.split(".")[0])


# A moment waits for its point in the run (at or after `target`, and past the checkpoint the
# run resumed from) and kills the process there; it says where the kill landed.
Moment = Callable[[subprocess.Popen, Path, int, int, random.Random], str]


def kill_after(proc: subprocess.Popen, workdir: Path, delay: float, saved: int) -> None:
    """Kill `proc` `delay` seconds from now, or as soon as a checkpoint past `saved` completes."""
    deadline = time.monotonic() + delay
    wait_until(lambda: time.monotonic() > deadline or last_complete(workdir) > saved, proc)
    proc.kill()


def during_start_up(proc: subprocess.Popen, workdir: Path, resumed: int, target: int,
                    rng: random.Random) -> str:
    delay = rng.uniform(0.2, 3.0)
    kill_after(proc, workdir, delay, saved=resumed)
    return f"{delay:.2f} s after start"


def after_a_checkpoint(proc: subprocess.Popen, workdir: Path, resumed: int, target: int,
                       rng: random.Random) -> str:
    target = max(target, resumed + EVERY)
    wait_until(lambda: last_complete(workdir) >= target, proc)
    delay = rng.uniform(0.0, 0.15)
    kill_after(proc, workdir, delay, saved=target)
    return f"{delay * 1000:.0f} ms after step {target} was saved"


def mid_save(proc: subprocess.Popen, workdir: Path, resumed: int, target: int,
             rng: random.Random) -> str:
    target = max(target, resumed + EVERY)
    while True:
        wait_until(lambda: any(step_of(n) >= target for n in saves_in_progress(workdir)), proc)
        freeze(proc)
        pending = [step_of(n) for n in saves_in_progress(workdir) if step_of(n) >= target]
        if pending:
            proc.kill()
            return f"while step {pending[0]} was being saved"
        proc.send_signal(signal.SIGCONT)  # it finished between the look and the stop: again


def schedule(rng: random.Random) -> list[tuple[Moment, int]]:
    """20 (moment, target step) pairs in the order of the run.

    Mid-save kills at the two epoch ends inside the run, and one in the last chunk (after the
    last checkpoint before the end: the final save may be under way); 14 kills at random
    checkpoints, but not at one just before an epoch end (a kill after it could pass that
    epoch end's save); 3 kills at random times during start-up, wherever they fall.

    (Not mid-save at the final save: a save that completes between our look and the freeze is
    caught at the next one, and after the final save there is none.)
    """
    spe, total = TINY.steps_per_epoch, TINY.total_steps
    ends = list(range(spe, total + 1, spe))
    saves = [s for s in range(EVERY, total, EVERY) if s not in ends and s + EVERY not in ends]
    targeted = [(rng.choice([after_a_checkpoint, mid_save]), step)
                for step in rng.sample(saves, 14)]
    targeted += [(mid_save, end) for end in ends[:-1]] + [(after_a_checkpoint, total - EVERY)]
    moments = sorted(targeted, key=lambda moment: moment[1])
    for _ in range(3):
        at = rng.randrange(len(moments) + 1)
        moments.insert(at, (during_start_up, moments[at - 1][1] if at else 0))
    return moments


def test_sigkill_at_twenty_moments_never_loses_a_complete_checkpoint_or_the_result(
        tmp_path, uninterrupted):
    rng = random.Random(SEED)
    moments = schedule(rng)
    assert len(moments) == KILLS
    workdir = tmp_path / "run"
    landed, resume_points = [], []
    for number, (moment, target) in enumerate(moments):
        log = tmp_path / f"log{number}"
        resumed, debris = last_complete(workdir), set(saves_in_progress(workdir))
        proc = start_training(train_args(workdir), log)
        where = moment(proc, workdir, resumed, target, rng)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        interrupted = set(saves_in_progress(workdir)) - debris
        landed.append(f"kill {number + 1:>2}: {where}"
                      f"{' (a save in progress)' if interrupted else ''}")
        assert last_complete(workdir) >= resumed, "a complete checkpoint was lost"
        resume_points.append(last_complete(workdir))
        assert_clean(log)

    final = tmp_path / "final.log"
    assert start_training(train_args(workdir), final).wait(timeout=300) == 0, final.read_text()
    assert_clean(final)
    print("\n".join(landed))

    # Every run that got as far as restoring resumed from the newest complete checkpoint.
    logs = [tmp_path / f"log{n}" for n in range(1, len(moments))] + [final]
    restored = 0
    for log, newest in zip(logs, resume_points, strict=True):
        resumed_from = [int(s) for s in re.findall(r"resuming .* from step (\d+) ",
                                                    log.read_text())]
        assert resumed_from in ([], [newest]), (log, resumed_from, newest)
        restored += bool(resumed_from)
    assert f"from step {resume_points[-1]} " in final.read_text()
    print(f"{len(moments)} kills; {restored} of the {len(logs)} runs after them got as far as "
          "restoring, each from the newest complete checkpoint")
    assert not saves_in_progress(workdir)  # the killed saves' debris was cleaned up
    assert fingerprint(workdir, TINY.total_steps) == fingerprint(uninterrupted, TINY.total_steps)
    assert comparable(workdir) == comparable(uninterrupted)


def assert_clean(log: Path) -> None:
    """No errors, tracebacks or damaged-checkpoint warnings, whatever the kill hit."""
    text = log.read_text()
    assert "Traceback" not in text and "error" not in text and "warning" not in text, text
