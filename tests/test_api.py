"""The Python API: what docs/python.md shows runs as written, and means what it says."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib

import jax
import numpy as np
import pytest

from digitsjax import api
from digitsjax.core.config import Pipeline, TrainConfig, load_pipeline
from digitsjax.errors import ConfigError, ImageError, UserError
from digitsjax.run.records import read_metrics
from digitsjax.run.workdir import Workdir

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
    for call in ("api.train(tables", "api.sweep(", "api.runs(", "api.compare(",
                 "api.classify_files(net"):
        assert call in script
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    runs = [line.split() for line in lines if line.startswith("runs/small")]
    assert [run[:3] for run in runs] == [["runs/small", "finished", "1"],
                                         ["runs/small-seed1", "finished", "1"]]
    assert (tmp_path / "runs" / "small" / "plots" / "compare.png").is_file()
    if jax.default_backend() == "cpu":  # the sweep's point 1 is the single run, bit for bit
        assert "True" in lines and "False" not in lines
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


MNIST_MLP = REPO / "pipelines" / "mnist_mlp.toml"


def test_a_pipeline_is_a_file_a_dict_of_its_tables_or_a_pipeline_and_overrides_a_dict_or_list():
    from_file = api.resolve(MNIST_MLP, ["train.epochs=3", "model.hidden=[100]"])
    assert (from_file.name, from_file.train.epochs, from_file.model.hidden) == (
        "mnist_mlp", 3, (100,))
    tables = tomllib.loads(MNIST_MLP.read_text()) | {"name": "mnist_mlp"}
    as_read = copy.deepcopy(tables)
    as_dict = {"train.epochs": 3, "model.hidden": [100]}
    assert api.resolve(tables, as_dict) == from_file
    assert tables == as_read  # the caller's dict is left as it was
    assert api.resolve(load_pipeline(MNIST_MLP), as_dict) == from_file
    assert api.resolve(str(MNIST_MLP), "train.epochs=3").train.epochs == 3
    assert api.resolve({"train": {"epochs": 2}}) == Pipeline(train=TrainConfig(epochs=2))


PIPELINES = REPO / "pipelines"


# Every misuse of the API is a UserError in one line, and writes nothing.
@pytest.mark.parametrize("call, problem", [
    (lambda w: api.train(None, w), "a pipeline must be a TOML file's path, a dict of its "
                                   "tables or a Pipeline, got NoneType None"),
    (lambda w: api.train(3, w), "got int 3"),
    (lambda w: api.train(MNIST_MLP, 3), "workdir must be a path (a str or pathlib.Path), got 3"),
    (lambda w: api.train(MNIST_MLP, w, 3), "overrides must be a list of section.key=value "
                                           "strings or a dict, got int 3"),
    (lambda w: api.train(MNIST_MLP, w, [3]), "override 3 must be a section.key=value string"),
    (lambda w: api.train(MNIST_MLP, w, {3: 1}), "override key 3 must be a section.key string"),
    (lambda w: api.train(MNIST_MLP, w, {"train.epochs": "3"}), "'train.epochs' must be"),
    (lambda w: api.train({1: {}}, w), "the pipeline dict: unknown key '1'"),
    (lambda w: api.train({"sweep": {"seed": [0, 1]}}, w), "the pipeline dict has a [sweep] "
                                                          "table: it describes several runs"),
    (lambda w: api.train(MNIST_MLP, w, mnist_dir=3), "mnist_dir must be a path"),
    (lambda w: api.sweep(MNIST_MLP, w), "has no [sweep] table, and no grid was given"),
    (lambda w: api.sweep(MNIST_MLP, w, grid={"seed": 0}), "grid: [sweep] seed must be a "
                                                          "non-empty list of values"),
    (lambda w: api.sweep(MNIST_MLP, w, grid=[("seed", [0])]), "grid must be a dict"),
    (lambda w: api.sweep(PIPELINES / "lr_sweep.toml", w, grid={"seed": [0]}),
     "grid key 'seed' is also in the [sweep] table of"),
    (lambda w: api.sweep(MNIST_MLP, w, grid={"seed": [0, 1]}, max_models_per_program=0),
     "max_models_per_program must be a whole number >= 1, got 0"),
    (lambda w: api.runs(3), "folder must be a path"),
    (lambda w: api.compare(str(w)), "workdirs must be a list of run folders"),
    (lambda w: api.load(None), "workdir must be a path (a str or pathlib.Path), got None"),
    (lambda w: api.load(w, point="1"), "point must be a whole number, got '1'"),
    (lambda w: api.load(w, checkpoint=None), "checkpoint must be 'latest', 'best' or a step"),
    (lambda w: api.classify_files("net", ["a.png"]), "expected a trained network, got str"),
    (lambda w: api.evaluate(None), "expected a trained network, got NoneType"),
], ids=lambda value: "" if callable(value) else value[:40])
def test_a_misuse_of_the_api_is_a_user_error_that_writes_nothing(tmp_path, call, problem):
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as error:
        call(workdir)
    assert problem in str(error.value) and "\n" not in str(error.value)
    assert not workdir.exists()


def test_runs_are_rows_of_plain_values_and_an_unreadable_one_says_why(trained_workdir,
                                                                     tmp_path):
    (tmp_path / "good").symlink_to(trained_workdir)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    broken, good = api.runs(tmp_path)
    final = read_metrics(trained_workdir)[-1]
    assert (good["state"], good["epochs_done"], good["epochs"]) == ("finished", 2, 2)
    assert good["test_accuracy"] == final["test_accuracy"] and good["error"] is None
    assert good["params_sha256"] == Workdir.open(trained_workdir).result["params_sha256"]
    assert good["workdir"] == str(tmp_path / "good")
    assert broken["state"] == "unreadable" and "manifest.json" in broken["error"]
    assert broken.keys() == good.keys() and broken["test_accuracy"] is None


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


def test_nested_lists_are_images_too_unless_their_rows_are_ragged(trained_workdir, mnist):
    net = api.load(trained_workdir)
    images = mnist.test_images[:3]
    np.testing.assert_array_equal(net.classify(images.tolist()), net.classify(images))
    with pytest.raises(ImageError, match="got lists of unequal lengths"):
        net.classify([[0.0] * 784, [0.0] * 783])


def test_the_check_leaves_valid_images_as_they_were(trained_workdir, mnist):
    net = api.load(trained_workdir)
    images = mnist.test_images[:100]
    np.testing.assert_array_equal(net.probabilities(images),
                                  net.probabilities(images.astype(np.float64)))
    assert net.classify(np.zeros((0, 784), np.float32)).shape == (0,)
