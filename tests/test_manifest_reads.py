"""A command opens a workdir's manifest.json once and passes what it read down (a `Workdir`),
rather than each function that needs a piece of it reading the file again.

Counted in the real command's process: an audit hook sees every `open` the process makes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, TINY, train_mnist_mlp
from .digit_pictures import dark_ink_gray_png

COUNTING = """
import os, runpy, sys

log = os.open(os.environ["MANIFEST_OPENS"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def count(event, args):
    if event != "open" or isinstance(args[0], int):  # an int: a file descriptor
        return
    path = os.fsdecode(args[0])
    if path.endswith("manifest.json"):
        os.write(log, (path + "\\n").encode())  # os.write opens nothing


sys.addaudithook(count)
runpy.run_module("digitsjax", run_name="__main__", alter_sys=True)  # python -m digitsjax
"""


def manifest_opens(log: Path, *command: str) -> list[str]:
    """The paths of manifest.json that `digitsjax COMMAND` opened, in order."""
    result = subprocess.run([sys.executable, "-c", COUNTING, *command], capture_output=True,
                            text=True, env={**os.environ, "MANIFEST_OPENS": str(log)},
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mnist_dir) -> Path:
    """One epoch of 10 steps: a finished run that `verify` replays in seconds."""
    return train_mnist_mlp(tmp_path_factory.mktemp("tiny"), [*TINY, "train.epochs=1"],
                           mnist_dir)


@pytest.mark.parametrize("command", ["predict", "evaluate", "export"])
def test_a_command_on_a_trained_network_opens_the_manifest_once(command, trained_workdir, mnist,
                                                                 tmp_path):
    picture = tmp_path / "digit.png"
    picture.write_bytes(dark_ink_gray_png(mnist.test_images[0].reshape(28, 28)))
    arguments = {"predict": [str(picture)],
                 "evaluate": [],
                 "export": ["--format", "npz", "--output", str(tmp_path / "model.npz")]}
    opens = manifest_opens(tmp_path / "opens.log", command, str(trained_workdir),
                           *arguments[command])
    assert opens == [str(trained_workdir / "manifest.json")]


def test_verify_opens_the_manifests_at_most_three_times(tiny_run, tmp_path):
    """The workdir's, and the replay's: the replay writes a manifest of its own."""
    opens = manifest_opens(tmp_path / "opens.log", "verify", str(tiny_run))
    assert str(tiny_run / "manifest.json") in opens
    assert len(opens) <= 3, opens
