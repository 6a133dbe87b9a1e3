"""How long checkpointing and preemption take, measured side by side on this machine.

    python bench/resume_timings.py [--repeats 5] [--epochs 5]

1. One checkpoint of mnist_mlp's train state: the blocking part of `save` (device-to-host copy,
   hand-off to orbax's writer thread) and the time until it is complete on disk.
2. Training with a checkpoint at every epoch against one at the end only: the overhead ratio.
3. SIGTERM to process exit for `digitsjax train` (real processes), with the default cadence
   (chunks are whole epochs); the signal is sent as the first epoch's record appears.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from digitsjax.core.config import load_pipeline
from digitsjax.core.program import init_state, program_of
from digitsjax.run import checkpoint
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import METRICS

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"


def median_ms(seconds: list[float]) -> str:
    return f"{1e3 * statistics.median(seconds):7.1f} ms"


def save_times(repeats: int) -> tuple[list[float], list[float]]:
    pipeline = load_pipeline(PIPELINE)
    state = init_state(program_of(pipeline))
    blocking, complete = [], []
    with tempfile.TemporaryDirectory() as workdir:
        manager = checkpoint.open_manager(Path(workdir), pipeline.checkpoint)
        for step in range(repeats + 1):  # the first save also sets orbax up: not counted
            state = state | {"step": jnp.asarray(step + 1, jnp.int32)}
            started = time.perf_counter()
            checkpoint.save(manager, state, {"epoch": 0.0})
            returned = time.perf_counter()
            manager.wait_until_finished()
            if step:
                blocking.append(returned - started)
                complete.append(time.perf_counter() - started)
        checkpoint.close(manager)
    return blocking, complete


def training_seconds(epochs: int, every_epoch: bool, mnist_dir: str | None) -> float:
    pipeline = load_pipeline(PIPELINE, [f"train.epochs={epochs}",
                                        f"checkpoint.every_epoch={str(every_epoch).lower()}"])
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        train_pipeline(pipeline, workdir, mnist_dir=mnist_dir, echo=lambda _: None)
        return time.perf_counter() - started


def sigterm_to_exit(epochs: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen([sys.executable, "-m", "digitsjax", "train", str(PIPELINE),
                                 "--workdir", workdir, f"--set=train.epochs={epochs}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        metrics = Path(workdir) / METRICS
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
            if proc.poll() is not None:
                raise RuntimeError(f"training exited with {proc.returncode} before epoch 1")
            time.sleep(0.002)
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        return time.perf_counter() - sent, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    mnist_dir = os.environ.get("DIGITSJAX_MNIST_DIR")
    print(f"{jax.default_backend()} backend, {os.cpu_count()} cores visible; "
          f"medians of {args.repeats}")

    blocking, complete = save_times(args.repeats)
    print(f"checkpoint save, blocking part:   {median_ms(blocking)}")
    print(f"checkpoint save, until complete:  {median_ms(complete)}")

    with_saves, without = [], []
    for _ in range(args.repeats):  # interleaved, so that load on the machine hits both alike
        with_saves.append(training_seconds(args.epochs, True, mnist_dir))
        without.append(training_seconds(args.epochs, False, mnist_dir))
    a, b = statistics.median(with_saves), statistics.median(without)
    print(f"{args.epochs} epochs, a checkpoint every epoch: {a:6.2f} s; only at the end: "
          f"{b:6.2f} s; ratio {a / b:.2f}")

    stops = [sigterm_to_exit(args.epochs) for _ in range(args.repeats)]
    print(f"SIGTERM to exit:                  {median_ms([s for s, _ in stops])} "
          f"(max {1e3 * max(s for s, _ in stops):.0f} ms; exit codes "
          f"{sorted({code for _, code in stops})})")


if __name__ == "__main__":
    main()
