"""bench/drawn_digits.py: its pictures are what it says they are (every digit, drawn as asked,
the same for a seed), and its scoring runs through `predict`'s path on a trained workdir."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import numpy as np
import pytest

from digitsjax.apps.imaging import normalize_digit

from .conftest import REPO


def _load_bench():
    """bench/ is no package: load the script as a module by its path (registered, so that its
    dataclasses resolve their module)."""
    name = "bench_drawn_digits"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "drawn_digits.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


drawn = _load_bench()


def pixels(spec) -> np.ndarray:
    return np.asarray(drawn.render(spec), np.float32) / 255.0


def ink_of(spec) -> np.ndarray:
    """The ink map in [0, 1] (1 = full ink) whatever the paper."""
    page = pixels(spec)
    return 1.0 - page if spec.paper == "white" else page


def centred(**changes):
    """A plain picture to vary one thing of: a 280 px page, 6 % pen, 60 % high, upright."""
    base = drawn.sample(1, 0)[0]
    return replace(base, **{"digit": 4, "style": "closed", "thickness": 0.06, "height": 0.6,
                            "position": "centre", "slant": 0, "page": 280, "paper": "white",
                            **changes})


def test_templates_cover_every_digit_in_several_styles():
    assert sorted(drawn.TEMPLATES) == list(range(10))
    for digit, styles in drawn.TEMPLATES.items():
        assert len(styles) >= 2, digit
        for strokes in styles.values():
            assert strokes and all(len(stroke) >= 2 for stroke in strokes)
            points = np.concatenate([np.asarray(stroke) for stroke in strokes])
            assert points.min() >= -0.01 and points.max() <= 1.01  # in the unit box


def test_the_sample_is_fixed_by_its_seed_and_balanced():
    first, again, other = drawn.sample(90, 3), drawn.sample(90, 3), drawn.sample(90, 4)
    assert first == again and first != other
    assert [drawn.render(s).tobytes() for s in first[:5]] == \
        [drawn.render(s).tobytes() for s in again[:5]]
    assert [s.digit for s in first] == [i % 10 for i in range(90)]
    for factor, levels in drawn.FACTORS.items():
        counts = [sum(getattr(s, factor) == level for s in first) for level in levels]
        assert max(counts) - min(counts) <= 1, (factor, counts)


def test_every_picture_has_ink_on_paper_inside_the_page():
    for spec in drawn.sample(60, 0):
        page = pixels(spec)
        assert page.shape == (spec.page, spec.page)
        ink = ink_of(spec)
        assert 0.01 < (ink > 0.5).mean() < 0.5, spec  # a digit, neither blank nor a blot
        assert (ink < 0.02).mean() > 0.5, spec        # mostly clean paper
        border = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
        assert border.max() < 0.5, spec               # the pen never leaves the page
        assert normalize_digit(page).max() == 1.0     # imaging.py finds the digit in it


def test_thicker_pens_leave_more_ink_and_taller_digits_are_taller():
    fractions = [(ink_of(centred(thickness=t)) > 0.5).mean() for t in (0.03, 0.06, 0.10)]
    assert fractions == sorted(fractions) and fractions[2] > 2 * fractions[0]
    for height in (0.4, 0.6, 0.8):
        spec = centred(height=height, thickness=0.03)
        rows = np.flatnonzero((ink_of(spec) > 0.5).any(axis=1))
        drawn_height = (rows[-1] - rows[0] + 1) / spec.page
        assert drawn_height == pytest.approx(height + spec.thickness, abs=0.04), height


@pytest.mark.parametrize("position", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_off_centre_digits_sit_towards_their_corner(position):
    ink = ink_of(centred(position=position, height=0.4))
    rows, cols = np.nonzero(ink > 0.5)
    top, left = rows.mean() < 140, cols.mean() < 140
    assert (top, left) == (position.startswith("top"), position.endswith("left"))


def test_the_contact_sheet_shows_the_pictures():
    sheet = drawn.contact_sheet(drawn.sample(12, 0), columns=6, cell=40)
    assert sheet.size[0] >= 6 * 40 and sheet.size[1] >= 2 * 40
    assert np.asarray(sheet).std() > 20


def test_scoring_a_trained_workdir_goes_through_predict(trained_workdir):
    specs = drawn.sample(60, 0)
    [result] = drawn.evaluate([trained_workdir], specs)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert result["count"] == 60 and result["refused"] == 0
    assert result["pipeline"] == "mnist_mlp" and result["augment"] is False
    assert set(result["by"]) == {*drawn.FACTORS, "digit"}
    assert set(result["by"]["thickness"]) == {"thickness 3%", "thickness 6%", "thickness 10%"}
    assert len(result["by"]["position"]) == 5 and len(result["by"]["digit"]) == 10
    assert all(0.0 <= v <= 1.0 for levels in result["by"].values() for v in levels.values())
    report = drawn.table([result, result])
    assert "| [augment] | off | off |" in report and "| **accuracy %** |" in report
    assert "+0.0" in report  # a workdir's difference from itself
    print(report)
