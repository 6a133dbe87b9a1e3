"""`digitsjax plots DIR`: the PNGs a person looks at (they were also checked by eye), written
whole into the workdir's plots/ and listed in its ledger, never over a picture of the user's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitsjax.files import LEDGER, OwnedFolder
from digitsjax.main import main

from .conftest import run_cli
from .filesystem import files, refusing_writes_of

EXPECTED = {  # file -> its size in pixels (matplotlib figure size x 100 dpi)
    "samples.png": (950, 710),
    "predictions.png": (950, 710),
    "mistakes.png": (950, 710),
    "confusion.png": (700, 620),
    "curves.png": (1100, 420),
}


def test_plots_writes_every_picture_into_the_workdir(trained_workdir):
    result = run_cli("plots", str(trained_workdir))
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.splitlines()]
    assert sorted(p.name for p in written) == sorted(EXPECTED)
    for path in written:
        assert path.parent == trained_workdir / "plots"
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == EXPECTED[path.name]
            pixels = np.asarray(image.convert("L"), np.float32)
        assert pixels.std() > 20, f"{path.name} looks blank"


def test_plots_of_a_folder_without_a_run_is_a_one_line_error(tmp_path):
    result = run_cli("plots", str(tmp_path))
    assert result.returncode == 2
    assert "is not a digitsjax workdir" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def workdir(trained_workdir, tmp_path) -> Path:
    """A copy of the trained run as training left it: no plots, nothing listed."""
    return shutil.copytree(trained_workdir, tmp_path / "run",
                           ignore=shutil.ignore_patterns("plots", "export", LEDGER))


def test_a_users_picture_in_plots_is_never_replaced(workdir, capsys):
    (workdir / "plots").mkdir()
    (workdir / "plots" / "curves.png").write_bytes(b"mine")
    before = files(workdir)
    assert main(["plots", str(workdir)]) == 2
    assert capsys.readouterr().err == (
        f"digitsjax: error: {workdir}/plots/curves.png exists and digitsjax did not write it; "
        "move it away, or choose another place\n")
    assert files(workdir) == before  # no other picture, and nothing listed


def test_pictures_drawn_before_the_ledger_are_drawn_again_but_a_users_picture_is_not(workdir,
                                                                                   capsys):
    """A workdir from a version without the ledger: the PNGs matplotlib saved there under the
    pictures' names are digitsjax's; a picture saved by anything else is the user's."""
    assert main(["plots", str(workdir)]) == 0
    (workdir / LEDGER).unlink()  # as an earlier version left it
    assert main(["plots", str(workdir)]) == 0
    (workdir / LEDGER).unlink()
    Image.new("L", (28, 28)).save(workdir / "plots" / "mistakes.png")  # the user's, same name
    before = files(workdir)
    assert main(["plots", str(workdir)]) == 2
    assert capsys.readouterr().err.endswith(
        f"{workdir}/plots/mistakes.png exists and digitsjax did not write it; "
        "move it away, or choose another place\n")
    assert files(workdir) == before


def test_plots_that_cannot_be_written_are_one_line_and_leave_no_half_written_picture(
        workdir, capsys, monkeypatch):
    monkeypatch.setattr(os, "replace", refusing_writes_of(".png"))
    assert main(["plots", str(workdir)]) == 2
    assert capsys.readouterr().err == (
        f"digitsjax: error: cannot write {workdir}/plots/samples.png (Read-only file system); "
        "free space or make it writable, or choose another place\n")
    assert list((workdir / "plots").iterdir()) == []
    monkeypatch.undo()
    assert main(["plots", str(workdir)]) == 0
    assert {f"plots/{name}" for name in EXPECTED} | {"plots/"} <= OwnedFolder(workdir).written()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_plots_of_a_read_only_workdir_are_one_line(workdir, capsys):
    workdir.chmod(0o555)
    try:
        assert main(["plots", str(workdir)]) == 2
    finally:
        workdir.chmod(0o755)
    err = capsys.readouterr().err
    assert err.startswith("digitsjax: error: cannot write ") and err.count("\n") == 1
    assert not (workdir / "plots").exists()
