"""Real `digitsjax train` processes, and ways to find the moments to interrupt them at.

What a process leaves in its workdir is the clock: a finished epoch's line in metrics.jsonl, a
complete checkpoint's `<step>/` folder, or orbax's `<step>.orbax-checkpoint-tmp-*` folder while
a checkpoint is being written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from digitsjax.core.model import params_sha256
from digitsjax.run import checkpoint
from digitsjax.run.records import METRICS, TIMING_FIELDS, read_metrics
from digitsjax.run.trained import load_network

from .conftest import REPO

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a checkpoint still being written


def start_training(args: Sequence[str], log: Path) -> subprocess.Popen:
    """`digitsjax ARGS` in its own process, output to `log` (a pipe could fill and block it)."""
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "digitsjax", *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training exited ({proc.returncode}) before the moment"
        assert time.monotonic() < deadline, "timed out waiting for the moment to interrupt"
        time.sleep(0.002)


def freeze(proc: subprocess.Popen) -> None:
    """SIGSTOP, and wait until the kernel has really stopped every thread of the process."""
    proc.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{proc.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.001)


def finished_epochs(workdir: Path) -> int:
    path = workdir / METRICS
    return path.read_text().count("\n") if path.exists() else 0


def saved_steps(workdir: Path) -> list[int]:
    root = checkpoint.checkpoint_dir(workdir)
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() \
        else []


def saves_in_progress(workdir: Path) -> list[str]:
    root = checkpoint.checkpoint_dir(workdir)
    return [p.name for p in root.iterdir() if TMP_SUFFIX in p.name] if root.exists() else []


def fingerprint(workdir: Path, total_steps: int) -> str:
    """The final params' sha256; the workdir must have finished all `total_steps`."""
    network = load_network(workdir)
    assert network.step == total_steps
    return params_sha256(network.params)


def comparable(workdir: Path) -> list[dict]:
    """The epoch records without their timings: what a resumed run must reproduce exactly."""
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(workdir)]
