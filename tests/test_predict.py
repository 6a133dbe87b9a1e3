"""`digitsjax predict`: real digits as PNG/JPEG files, classified by a trained workdir."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitsjax.apps.predict import Predictor

from .conftest import run_cli
from .digit_pictures import VARIANTS, dark_ink_gray_png

COUNT = 200  # test digits per picture variant


@pytest.fixture(scope="module")
def predictor(trained_workdir) -> Predictor:
    return Predictor.from_workdir(trained_workdir)


@pytest.fixture(scope="module")
def originals(mnist, predictor) -> tuple[np.ndarray, np.ndarray, float]:
    """The digits, their labels, and the network's accuracy on them as MNIST stores them."""
    images = mnist.test_images[:COUNT].reshape(-1, 28, 28)
    labels = mnist.test_labels[:COUNT]
    predicted = np.array([p.digit for p in predictor.classify(images)])
    return images, labels, float(np.mean(predicted == labels))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pictures_are_classified_as_well_as_mnist_itself(predictor, originals, variant):
    images, labels, accuracy_on_mnist = originals
    predictions = [predictor.predict_bytes(VARIANTS[variant](image)) for image in images]
    accuracy = np.mean([p.digit for p in predictions] == labels)
    print(f"{variant}: {100 * accuracy:.1f}% (on MNIST's own images: "
          f"{100 * accuracy_on_mnist:.1f}%)")
    assert accuracy >= accuracy_on_mnist - 0.02
    assert accuracy >= 0.93


def test_a_prediction_carries_probabilities_and_the_image_the_network_saw(predictor, originals):
    prediction = predictor.predict_bytes(dark_ink_gray_png(originals[0][0]))
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert prediction.digit == int(np.argmax(prediction.probabilities))
    (best, _), *_ = top = prediction.top(3)
    assert best == prediction.digit
    assert [q for _, q in top] == sorted((q for _, q in top), reverse=True)
    assert prediction.input.shape == (28, 28)


def test_cli_prints_digit_and_top3_per_file_and_json(tmp_path, trained_workdir, originals):
    images, labels, _ = originals
    paths = []
    for i, (name, render) in enumerate(VARIANTS.items()):
        suffix = ".jpg" if "JPEG" in name else ".png"
        paths.append(tmp_path / f"digit{i}{suffix}")
        paths[-1].write_bytes(render(images[i]))
    result = run_cli("predict", str(trained_workdir), *map(str, paths), "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [p["image"] for p in answer["predictions"]] == [str(p) for p in paths]
    for label, prediction in zip(labels, answer["predictions"], strict=False):
        assert prediction["digit"] == label
        assert len(prediction["probabilities"]) == 10
        assert prediction["top3"][0]["digit"] == label

    text = run_cli("predict", str(trained_workdir), str(paths[0]))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"{paths[0]}: {labels[0]} ")
    assert text.stdout.count("%") == 3


def test_cli_names_a_missing_or_foreign_file_in_one_line(tmp_path, trained_workdir):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    missing = run_cli("predict", str(trained_workdir), str(tmp_path / "seven.png"))
    foreign = run_cli("predict", str(trained_workdir), str(notes))
    for result, fragment in ((missing, "seven.png not found"),
                             (foreign, "notes.txt is not a PNG or JPEG")):
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and fragment in result.stderr
        assert "Traceback" not in result.stderr
