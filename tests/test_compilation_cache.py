"""The persistent compilation cache: later runs read compiled programs instead of compiling,
and train exactly the same bits."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

from .conftest import run_cli

# A one-epoch run on 10,000 images: every program of a real run, compiled in seconds.
TINY = ("train", "pipelines/mnist_mlp.toml", "--set", "train.epochs=1",
        "--set", "data.validation_size=50000")


def train(workdir, **env):
    result = run_cli(*TINY, "--workdir", str(workdir), env=env)
    assert result.returncode == 0, result.stderr
    return re.search(r"params_sha256 ([0-9a-f]{64})", result.stdout).group(1)


@pytest.mark.slow
def test_a_second_run_compiles_nothing_and_trains_the_same_bits(tmp_path):
    cache = tmp_path / "jax-cache"
    uncached = train(tmp_path / "off", DIGITSJAX_COMPILATION_CACHE="off",
                     XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert not (tmp_path / "xdg").exists()  # "off" writes no cache anywhere

    first = train(tmp_path / "first", DIGITSJAX_COMPILATION_CACHE=str(cache))
    entries = sorted(path.name for path in cache.iterdir())
    second = train(tmp_path / "second", DIGITSJAX_COMPILATION_CACHE=str(cache))

    assert any("train_chunk" in name for name in entries)
    assert sorted(path.name for path in cache.iterdir()) == entries  # every program was a hit
    assert uncached == first == second


def test_by_default_the_cache_lives_in_the_user_cache_dir(monkeypatch, tmp_path):
    from digitsjax.run.compilation_cache import CACHE_DIR_ENV, default_cache_dir

    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "digitsjax" / "jax-compilation-cache"


def test_an_unusable_cache_folder_is_reported_and_training_goes_on(monkeypatch, tmp_path,
                                                                     capsys):
    from digitsjax.run.compilation_cache import CACHE_DIR_ENV, enable_compilation_cache

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    assert enable_compilation_cache() is None
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"digitsjax: compilation cache off: cannot create {blocker}")
    assert len(message.splitlines()) == 1


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder that exists but where this process cannot create a file. File permissions do
    not stop root, so as root it is /proc, where nobody creates files."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        return folder
    try:
        (Path("/proc") / "digitsjax-probe").touch()
    except OSError:
        return Path("/proc")
    pytest.skip("as root, and /proc takes files here: no folder this process cannot write")


# A read-only cache folder (a shared cache, or a mistake): read, never written, and JAX's
# warning for each program it fails to store (44 lines for one run) is not shown.
def test_an_unwritable_cache_folder_is_still_read_and_its_write_failures_are_silent(
        tmp_path, monkeypatch, recwarn):
    from digitsjax.run.compilation_cache import (
        CACHE_DIR_ENV,
        WRITE_FAILED,
        enable_compilation_cache,
    )

    folder = unwritable_folder(tmp_path)
    monkeypatch.setenv(CACHE_DIR_ENV, str(folder))
    assert enable_compilation_cache() == folder
    warnings.warn(f"{WRITE_FAILED} for 'jit_stage': FileNotFoundError: ...", stacklevel=1)
    warnings.warn("another warning", stacklevel=1)
    assert [str(w.message) for w in recwarn] == ["another warning"]


@pytest.mark.slow
def test_a_run_with_an_unwritable_cache_folder_prints_nothing_of_it(tmp_path):
    folder = unwritable_folder(tmp_path)
    result = run_cli(*TINY, "--set", "model.hidden=[16]", "--workdir", str(tmp_path / "run"),
                     env={"DIGITSJAX_COMPILATION_CACHE": str(folder)})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
