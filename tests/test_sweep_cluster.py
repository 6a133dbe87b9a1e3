"""A sweep over several processes: `digitsjax sweep` with the cluster flags of `train`.

Two real processes on 127.0.0.1, each with 2 simulated CPU devices, sweep one grid of 8 TINY
points (learning rates) that train together. Every point must end at its fingerprint from the
same sweep on one device: a program's models split over all 4 devices of both processes, and a
model's bits do not depend on where it trains. Process 0 alone writes the sweep folder's own
files and says what happens. A sweep whose processes are killed mid-way resumes, when both are
started again with the same command, to the same fingerprints.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, TINY, run_cli
from .test_parallel import devices_env, free_port

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
GRID = "optimizer.learning_rate=[0.001,0.002,0.003,0.004,0.005,0.006,0.007,0.008]"
POINTS = 8
SETS = [f"--set={s}" for s in (*TINY, "train.epochs=2", "checkpoint.every_steps=5")]
TIMEOUT = 300


def sweep_command(sweep_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "digitsjax", "sweep", str(PIPELINE), "--grid", GRID,
            "--workdir", str(sweep_dir), *SETS, *extra]


def start_two(sweep_dir: Path, port: int, logs: Path, *extra: str) -> list[subprocess.Popen]:
    """The sweep as 2 processes of 2 devices each: the same command, each with its own
    --process-id; stdout and stderr into `logs`/process-I.{out,err} (a pipe could fill up)."""
    command = sweep_command(sweep_dir, *extra, "--coordinator-address", f"127.0.0.1:{port}",
                            "--num-processes", "2")
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    for i in range(2):
        with open(logs / f"process-{i}.out", "w") as out, \
                open(logs / f"process-{i}.err", "w") as err:
            processes.append(subprocess.Popen([*command, "--process-id", str(i)], cwd=REPO,
                                              env=devices_env(2), stdout=out, stderr=err))
    return processes


def finish(processes: list[subprocess.Popen], logs: Path) -> list[str]:
    """Wait for both processes; each one's stdout. A failed one fails the test at once, and its
    waiting partner is stopped."""
    try:
        for i, process in enumerate(processes):
            process.wait(timeout=TIMEOUT)
            err = (logs / f"process-{i}.err").read_text()
            assert process.returncode == 0, f"process {i}: {err[-3000:]}"
    finally:
        for process in processes:
            process.kill()
    return [(logs / f"process-{i}.out").read_text() for i in range(2)]


def fingerprints(sweep_dir: Path) -> list[str]:
    with open(sweep_dir / "sweep.csv") as f:
        return [row["params_sha256"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, mnist_dir) -> Path:
    """The reference: the same sweep on one device."""
    sweep_dir = tmp_path_factory.mktemp("one-device")
    result = run_cli(*sweep_command(sweep_dir)[3:], env=devices_env(1))
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, mnist_dir) -> dict:
    """The 8 points in one program over 2 processes x 2 devices: 2 models on each device."""
    root = tmp_path_factory.mktemp("two-processes")
    processes = start_two(root / "sweep", free_port(), root / "logs")
    return {"sweep": root / "sweep", "stdout": finish(processes, root / "logs")}


def test_two_processes_split_a_programs_models_and_keep_every_points_one_device_bits(
        two_processes, one_device):
    assert f"{POINTS} models over 4 devices, 2 each" in two_processes["stdout"][0]
    manifest = json.loads((two_processes["sweep"] / "program-1" / "manifest.json").read_text())
    assert manifest["platform"]["process_count"] == 2
    assert fingerprints(two_processes["sweep"]) == fingerprints(one_device)
    assert len(set(fingerprints(one_device))) == POINTS  # each point its own, all trained


def test_only_process_0_says_what_the_sweep_does_and_prints_its_summary(two_processes):
    primary, other = two_processes["stdout"]
    assert "sweep: 8 points in 1 program(s)" in primary
    assert str(two_processes["sweep"] / "sweep.csv") in primary
    # gloo, JAX's CPU collectives, prints its connections itself: those lines are not ours
    assert [line for line in other.splitlines() if not line.startswith("[Gloo]")] == []


def first_checkpoint(sweep_dir: Path, processes: list[subprocess.Popen]) -> Path:
    """The first finished checkpoint of the sweep's first program, once it lands."""
    checkpoints = sweep_dir / "program-1" / "checkpoints"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        steps = sorted(p for p in checkpoints.glob("*") if p.name.isdigit()) \
            if checkpoints.is_dir() else []
        if steps:
            return steps[0]
        assert all(p.poll() is None for p in processes), "a process ended before a checkpoint"
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint in {checkpoints} after {TIMEOUT} s")


def test_a_sweep_killed_mid_way_resumes_on_both_processes_to_the_same_fingerprints(
        tmp_path, one_device):
    """Two programs of 4 points (1 model per device); process 1 is SIGKILLed after the first
    checkpoint lands, then process 0, which would wait on it; the same command, on both, then
    finishes the sweep."""
    sweep_dir, port, extra = tmp_path / "sweep", free_port(), ("--max-models-per-program", "4")
    killed = start_two(sweep_dir, port, tmp_path / "killed", *extra)
    try:
        first_checkpoint(sweep_dir, killed)
    finally:
        for process in reversed(killed):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    assert [p.returncode for p in killed] == [-signal.SIGKILL] * 2
    assert not (sweep_dir / "sweep.csv").exists()  # killed mid-way, before the summary
    restarted = start_two(sweep_dir, port, tmp_path / "restarted", *extra)
    primary, _ = finish(restarted, tmp_path / "restarted")
    assert "resuming" in primary
    assert fingerprints(sweep_dir) == fingerprints(one_device)


def test_a_half_given_cluster_is_refused_in_one_line_before_anything_is_written(tmp_path):
    result = run_cli(*sweep_command(tmp_path / "sweep", "--num-processes", "2")[3:])
    assert result.returncode == 2
    assert result.stderr.startswith("digitsjax: error: --coordinator-address and --process-id "
                                    "missing")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweep").exists()


def test_a_folder_process_0_refuses_stops_every_process_with_its_one_line(tmp_path):
    """Process 0 alone prepares the sweep folder: its refusal (here, a folder of the user's) is
    every process's error, at once, rather than a wait for a process that has stopped."""
    sweep_dir = tmp_path / "users-folder"
    sweep_dir.mkdir()
    (sweep_dir / "thesis.tex").write_text("the user's")
    logs = tmp_path / "logs"
    started = time.monotonic()
    processes = start_two(sweep_dir, free_port(), logs)
    try:
        codes = [process.wait(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            process.kill()
    lines = [(logs / f"process-{i}.err").read_text().strip().splitlines() for i in range(2)]
    assert codes == [2, 2], lines
    assert lines[0][-1] == lines[1][-1], lines
    assert lines[0][-1].startswith("digitsjax: error: ")
    assert "is not a sweep folder" in lines[0][-1] and "--workdir" in lines[0][-1]
    assert time.monotonic() - started < 60
    assert (sweep_dir / "thesis.tex").read_text() == "the user's"
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["thesis.tex"]


def test_two_processes_search_by_successive_halving_to_the_one_device_search(tmp_path,
                                                                            mnist_dir):
    """Every process takes the rung's decision from the records process 0 wrote, and continues
    the survivors' states from the checkpoint both read: the same points stop, at the same
    bits, as on one device (where the 4 survivors then train one per device)."""
    halving = ("--grid", "rungs=[1]", "--grid", "keep=0.5")
    reference = tmp_path / "one-device"
    result = run_cli(*sweep_command(reference, *halving)[3:], env=devices_env(1))
    assert result.returncode == 0, result.stderr[-3000:]
    sweep_dir, logs = tmp_path / "two-processes", tmp_path / "logs"
    finish(start_two(sweep_dir, free_port(), logs, *halving), logs)

    def searched(folder: Path) -> list[tuple[str, str]]:
        with open(folder / "sweep.csv") as f:
            return [(row["params_sha256"], row["stopped_at"]) for row in csv.DictReader(f)]
    assert searched(sweep_dir) == searched(reference)
    assert sum(stopped == "" for _, stopped in searched(reference)) == POINTS // 2
