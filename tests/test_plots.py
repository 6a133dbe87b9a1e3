"""`digitsjax plots DIR`: the PNGs a person looks at (they were also checked by eye)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .conftest import run_cli

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
