"""The Python API: what docs/python.md shows runs as written, and means what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from digitsjax import api
from digitsjax.core.config import load_pipeline
from digitsjax.errors import ConfigError, ImageError

from . import conftest
from .conftest import REPO
from .digit_pictures import dark_ink_gray_png


def readme_python_examples() -> str:
    """The ```python blocks of docs/python.md's "From Python" section, in order, as one script."""
    page = (REPO / "docs" / "python.md").read_text()
    section = page.split("# From Python", 1)[1].split("\n## ", 1)[0]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, flags=re.S))


@pytest.mark.slow
def test_the_readmes_python_examples_run_as_written(tmp_path, mnist):
    (tmp_path / "pipelines").symlink_to(REPO / "pipelines")
    script = readme_python_examples()
    assert "api.train(" in script and "api.classify_files(net" in script
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-2] == f"digit.png {mnist.test_labels[0]}"
    assert lines[-1].startswith("missing.png ") and "not found" in lines[-1]


def test_a_loaded_network_classifies_as_evaluate_counts(trained_workdir, mnist):
    net = api.load(trained_workdir)
    digits = net.classify(mnist.test_images)
    assert digits.shape == (10_000,)
    assert np.mean(digits == mnist.test_labels) == pytest.approx(
        api.evaluate(net)["test_accuracy"], abs=1e-6)
    images = mnist.test_images[:5]
    probabilities = net.probabilities(images.reshape(5, 28, 28))  # either image shape
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), net.classify(images))
    assert net.step == 858 and net.pipeline.name == "mnist_mlp"
    assert [layer["w"].shape for layer in net.params] == [(784, 128), (128, 64), (64, 10)]


def test_pictures_are_classified_and_a_bad_one_is_named(trained_workdir, mnist, tmp_path):
    seven = tmp_path / "seven.png"
    seven.write_bytes(dark_ink_gray_png(mnist.test_images[0].reshape(28, 28)))
    (tmp_path / "notes.txt").write_text("not a picture")
    good, bad = api.classify_files(api.load(trained_workdir), [seven, tmp_path / "notes.txt"])
    assert good.prediction.digit == mnist.test_labels[0] and good.error is None
    assert bad.prediction is None and "notes.txt" in str(bad.error)


def test_an_array_of_the_wrong_shape_is_one_clear_error(trained_workdir):
    with pytest.raises(ImageError) as error:
        api.load(trained_workdir).classify(np.zeros((28, 28)))
    assert str(error.value) == ("images must be an array (N, 28, 28) or (N, 784), got shape "
                                "(28, 28); add a leading axis for one image: images[None]")


def test_overrides_go_with_a_pipeline_file_not_a_pipeline(tmp_path):
    pipeline = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml")
    with pytest.raises(TypeError):
        api.train(pipeline, tmp_path / "run", ["train.epochs=1"])
    assert not (tmp_path / "run").exists()


# One string where a list of them is expected is one item, never its characters one by one.
def test_one_override_given_as_a_string_is_one_override(tmp_path):
    with pytest.raises(ConfigError) as error:
        api.train(REPO / "pipelines" / "mnist_mlp.toml", tmp_path / "run",
                  overrides="train.epochs=0")
    assert str(error.value).endswith("'train.epochs' must be >= 1, got 0")
    assert not (tmp_path / "run").exists()


def test_a_finished_workdir_says_how_to_train_again_as_python_spells_it(tmp_path):
    lines: list[str] = []
    args = (REPO / "pipelines" / "mnist_mlp.toml", tmp_path / "run",
            [*conftest.TINY, "train.epochs=1"])
    api.train(*args, echo=lambda line: None)
    api.train(*args, echo=lines.append)
    assert any(line.endswith("is already trained (10 steps); pass restart=True to train again")
               for line in lines), lines


def test_one_picture_given_as_a_string_is_one_picture(trained_workdir, mnist, tmp_path):
    seven = tmp_path / "seven.png"
    seven.write_bytes(dark_ink_gray_png(mnist.test_images[0].reshape(28, 28)))
    for path in (str(seven), seven):
        (answer,) = api.classify_files(api.load(trained_workdir), path)
        assert answer.prediction.digit == mnist.test_labels[0] and answer.error is None


# Arrays are classified as MNIST's images are scaled: float pixels in [0, 1].
SCALE = "divide 0-255 pixels by 255 (images / 255)"


@pytest.mark.parametrize("images, problem, fix", [
    (np.full((2, 784), 255, np.uint8), "images must be floats in [0, 1], as MNIST's pixels "
                                       "are scaled, got uint8", SCALE),
    (np.full((2, 28, 28), 255.0, np.float32), "images must be floats in [0, 1], as MNIST's "
                                              "pixels are scaled, got values up to 255", SCALE),
    (np.full((2, 784), -0.5), "got values from -0.5 to -0.5", SCALE),
    (np.where(np.eye(28)[None] > 0, np.nan, 0.5), "images must be finite, got NaN",
     "np.nan_to_num"),
    (np.where(np.eye(28)[None] > 0, np.inf, 0.5), "images must be finite, got infinity",
     "np.nan_to_num"),
], ids=["uint8 0-255", "floats 0-255", "negative", "NaN", "infinite"])
def test_images_not_scaled_as_mnists_are_refused_in_one_line(trained_workdir, images, problem,
                                                             fix):
    net = api.load(trained_workdir)
    for apply in (net.classify, net.probabilities):
        with pytest.raises(ImageError) as error:
            apply(images)
        message = str(error.value)
        assert problem in message and fix in message and "\n" not in message


def test_the_check_leaves_valid_images_as_they_were(trained_workdir, mnist):
    net = api.load(trained_workdir)
    images = mnist.test_images[:100]
    np.testing.assert_array_equal(net.probabilities(images),
                                  net.probabilities(images.astype(np.float64)))
    assert net.classify(np.zeros((0, 784), np.float32)).shape == (0,)
