"""How the `digitsjax` process ends when it is not a mistake in its input: Ctrl-C, a reader
that stops reading, a platform JAX cannot start, `--version`. Each case runs the real command.

Exit statuses follow the shell's convention for a process a signal ended: 130 for SIGINT and
141 for SIGPIPE (128 + the signal's number), so `set -o pipefail` scripts see digitsjax the way
they see `cat` or `grep`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from digitsjax.run.workdir import MANIFEST

from .conftest import REPO, run_cli

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
CUDA_INSTALLED = any((dist.metadata["Name"] or "").lower().startswith(("jax-cuda", "jax_cuda"))
                     for dist in metadata.distributions())


def start(*args: str, stdout=subprocess.PIPE, unbuffered: bool = False) -> subprocess.Popen:
    """`digitsjax ARGS` in its own process (`unbuffered`: its lines arrive as printed)."""
    return subprocess.Popen([sys.executable, "-m", "digitsjax", *args], cwd=REPO, text=True,
                            stdout=stdout, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1" if unbuffered else ""})


def wait_for_reader(fifo: Path, process: subprocess.Popen, timeout: float = 120) -> int:
    """Block until `process` has opened `fifo` to read it; return our end, held open (and never
    written) so that the process waits in its read for as long as the test wants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until a reader opens it
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{process.args} never opened {fifo}")


def a_workdir_whose_manifest_never_arrives(trained: Path, tmp_path: Path) -> Path:
    """A copy of a trained workdir whose manifest.json is a FIFO: commands that load the
    network block reading it, at a known moment, until interrupted."""
    workdir = tmp_path / "waiting"
    shutil.copytree(trained, workdir)
    (workdir / MANIFEST).unlink()
    os.mkfifo(workdir / MANIFEST)
    return workdir


def a_digit_picture(tmp_path: Path) -> Path:
    from PIL import Image

    image = Image.new("L", (120, 160), 255)
    image.paste(0, (50, 20, 70, 140))
    path = tmp_path / "digit.png"
    image.save(path)
    return path


# Each command waits on a FIFO it reads first: a pipeline file, or a workdir's manifest.
INTERRUPTED = {
    "train": lambda p, w, img: (p, ["train", str(p), "--workdir", str(w.parent / "run")]),
    "sweep": lambda p, w, img: (p, ["sweep", str(p), "--grid", "seed=[0,1]",
                                    "--workdir", str(w.parent / "sweep")]),
    "evaluate": lambda p, w, img: (w / MANIFEST, ["evaluate", str(w)]),
    "plots": lambda p, w, img: (w / MANIFEST, ["plots", str(w)]),
    "verify": lambda p, w, img: (w / MANIFEST, ["verify", str(w)]),
    "predict": lambda p, w, img: (w / MANIFEST, ["predict", str(w), str(img)]),
}


@pytest.mark.parametrize("command", INTERRUPTED)
def test_ctrl_c_ends_any_command_with_one_line_and_status_130(command, trained_workdir,
                                                              tmp_path):
    pipeline = tmp_path / "pipeline.toml"
    os.mkfifo(pipeline)
    workdir = a_workdir_whose_manifest_never_arrives(trained_workdir, tmp_path)
    fifo, args = INTERRUPTED[command](pipeline, workdir, a_digit_picture(tmp_path))
    process = start(*args)
    held = wait_for_reader(fifo, process)
    try:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        os.close(held)
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == ["digitsjax: interrupted"], stderr
    assert stdout == ""


@pytest.mark.slow
def test_ctrl_c_while_a_sweep_trains_checkpoints_and_says_how_to_continue(tmp_path):
    process = start("sweep", str(PIPELINE), "--grid", "seed=[0,1]", "--set",
                    "train.epochs=100", "--workdir", str(tmp_path), unbuffered=True)
    for line in process.stdout:  # the first epoch's line: training is under way
        if line.startswith("epoch"):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.splitlines()[-1]
    assert last.startswith("digitsjax: stopped by SIGINT at step "), stderr
    assert last.endswith("which is checkpointed; run the same command again to continue")


@pytest.mark.parametrize("args", [
    ["--version"], ["--help"], ["sweep", "--help"], ["evaluate", "TRAINED"],
    ["evaluate", "TRAINED", "--json"],
])
def test_a_reader_that_stops_reading_ends_the_command_quietly(args, trained_workdir):
    """`digitsjax ... | head -1`, with the reader gone before the first line: no traceback and
    no "Exception ignored" from Python's exit, status 141 (128 + SIGPIPE) as for `cat`."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: every write to stdout is EPIPE
    args = [str(trained_workdir) if a == "TRAINED" else a for a in args]
    process = start(*args, stdout=write_end)
    os.close(write_end)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 141, stderr
    assert stderr == ""


def test_version_is_the_installed_package_version_that_manifests_record(trained_workdir):
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"digitsjax {metadata.version('digitsjax')}\n"
    manifest = json.loads((trained_workdir / MANIFEST).read_text())
    assert manifest["versions"]["digitsjax"] == metadata.version("digitsjax")


@pytest.mark.skipif(CUDA_INSTALLED, reason="JAX's CUDA build is installed here")
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_asking_for_a_gpu_without_the_gpu_build_says_how_to_install_it(command, tmp_path,
                                                                       trained_workdir):
    args = {"train": ["train", str(PIPELINE), "--workdir", str(tmp_path / "run")],
            "evaluate": ["evaluate", str(trained_workdir)]}[command]
    result = run_cli(*args, env={"JAX_PLATFORMS": "cuda"})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    jaxlib = metadata.version("jaxlib")
    assert lines[0].startswith("digitsjax: error: JAX cannot start the backend JAX_PLATFORMS "
                               "asks for ('cuda'): "), lines[0]
    assert f"installed: jax {metadata.version('jax')}, jaxlib {jaxlib}, no CUDA plugin" \
        in lines[0]
    assert "install the GPU build with `make install ACCEL=cuda`" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the workdir is touched
