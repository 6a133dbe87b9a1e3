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
from digitsjax.errors import ImageError

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
