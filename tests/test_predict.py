"""`digitsjax predict`: real digits as PNG/JPEG files, classified by a trained workdir."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from digitsjax.apps.imaging import MAX_IMAGE_BYTES
from digitsjax.apps.predict import predict_bytes, predict_files
from digitsjax.run.trained import Network, load_network

from .conftest import run_cli
from .digit_pictures import VARIANTS, dark_ink_gray_png

COUNT = 200  # test digits per picture variant


@pytest.fixture(scope="module")
def network(trained_workdir) -> Network:
    return load_network(trained_workdir)


@pytest.fixture(scope="module")
def originals(mnist, network) -> tuple[np.ndarray, np.ndarray, float]:
    """The digits, their labels, and the network's accuracy on them as MNIST stores them."""
    images = mnist.test_images[:COUNT].reshape(-1, 28, 28)
    labels = mnist.test_labels[:COUNT]
    predicted = network.classify(images)
    return images, labels, float(np.mean(predicted == labels))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pictures_are_classified_as_well_as_mnist_itself(network, originals, variant):
    images, labels, accuracy_on_mnist = originals
    predictions = [predict_bytes(network, VARIANTS[variant](image)) for image in images]
    accuracy = np.mean([p.digit for p in predictions] == labels)
    print(f"{variant}: {100 * accuracy:.1f}% (on MNIST's own images: "
          f"{100 * accuracy_on_mnist:.1f}%)")
    assert accuracy >= accuracy_on_mnist - 0.02
    assert accuracy >= 0.93


def test_a_prediction_carries_probabilities_and_the_image_the_network_saw(network, originals):
    prediction = predict_bytes(network, dark_ink_gray_png(originals[0][0]))
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


@pytest.fixture
def some_good_some_bad(tmp_path, originals) -> tuple[list[Path], dict[Path, int]]:
    """Five image arguments, in this order: a digit, a text file, a digit, a blank page and a
    missing file; with the label of each digit."""
    images, labels, _ = originals
    (_, png), (_, jpeg) = list(VARIANTS.items())[:2]
    good = {tmp_path / "a.png": png(images[0]), tmp_path / "c.jpg": jpeg(images[1])}
    for path, data in good.items():
        path.write_bytes(data)
    bad, blank = tmp_path / "bad.png", tmp_path / "blank.png"
    bad.write_text("not a picture")
    blank.write_bytes(dark_ink_gray_png(np.zeros((28, 28), np.float32)))
    paths = [tmp_path / "a.png", bad, tmp_path / "c.jpg", blank, tmp_path / "missing.png"]
    return paths, dict(zip(good, map(int, labels[:2]), strict=True))


def test_cli_classifies_every_good_file_and_names_each_bad_one(trained_workdir,
                                                               some_good_some_bad):
    paths, labels = some_good_some_bad
    result = run_cli("predict", str(trained_workdir), *map(str, paths))
    assert result.returncode == 2
    printed = result.stdout.splitlines()
    assert [line.split(": ")[0] for line in printed] == [str(p) for p in labels]
    for line, (path, label) in zip(printed, labels.items(), strict=True):
        assert line.startswith(f"{path}: {label} ")
    errors = result.stderr.splitlines()
    bad = [path for path in paths if path not in labels]
    assert len(errors) == len(bad)
    for line, path in zip(errors, bad, strict=True):
        assert line.startswith(f"digitsjax: error: {path} ")


def test_cli_json_gives_each_bad_file_an_error_in_argument_order(trained_workdir,
                                                                 some_good_some_bad):
    paths, labels = some_good_some_bad
    result = run_cli("predict", str(trained_workdir), *map(str, paths), "--json")
    assert result.returncode == 2
    answers = json.loads(result.stdout)["predictions"]
    assert [answer["image"] for answer in answers] == [str(p) for p in paths]
    for path, answer in zip(paths, answers, strict=True):
        if path in labels:
            assert answer["digit"] == labels[path] and "error" not in answer
        else:
            assert set(answer) == {"image", "error"}
            assert answer["error"].startswith(f"{path} ")
            assert f"digitsjax: error: {answer['error']}" in result.stderr.splitlines()
    assert len(result.stderr.splitlines()) == len(paths) - len(labels)


def test_the_good_files_are_classified_once_in_one_pass(some_good_some_bad, network):
    paths, labels = some_good_some_bad
    loads, batches = [], []

    class Counting:
        def probabilities(self, digits):
            batches.append(len(digits))
            return network.probabilities(digits)

    def load() -> Counting:
        loads.append(1)
        return Counting()

    _, answers = predict_files(paths, load)
    assert (loads, batches) == ([1], [len(labels)])
    assert [answer.path for answer in answers] == [str(p) for p in paths]
    assert [a.prediction.digit for a in answers if a.error is None] == list(labels.values())

    _, answers = predict_files([p for p in paths if p not in labels], load)
    assert loads == [1]  # no picture to classify: the network is not even loaded
    assert all(answer.error is not None for answer in answers)


def png_declaring(width: int, height: int) -> bytes:
    """~100 bytes of PNG whose header declares width x height pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data +
                struct.pack(">I", zlib.crc32(kind + data)))

    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))


def test_cli_refuses_endless_special_and_bomb_files_each_in_one_line(tmp_path, trained_workdir,
                                                                     originals):
    """/dev/zero never ends, a FIFO waits for a writer, a folder holds no bytes, a small PNG
    declares 100 million pixels: each is one line naming it, in argument order among the
    answers (stdout and stderr merged here), and the process ends."""
    images, labels, _ = originals
    seven = tmp_path / "seven.png"
    seven.write_bytes(dark_ink_gray_png(images[0]))
    fifo, folder, bomb = tmp_path / "pipe.png", tmp_path / "folder.png", tmp_path / "bomb.png"
    os.mkfifo(fifo)
    folder.mkdir()
    bomb.write_bytes(png_declaring(10_000, 10_000))
    merged = subprocess.run(
        [sys.executable, "-m", "digitsjax", "predict", str(trained_workdir), "/dev/zero",
         str(fifo), str(seven), str(folder), str(bomb)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    lines = merged.stdout.splitlines()
    assert merged.returncode == 2, merged.stdout
    assert len(lines) == 5, lines  # no warning, no traceback: five answers
    assert lines[0].startswith(f"digitsjax: error: /dev/zero is larger than "
                               f"{MAX_IMAGE_BYTES:,} bytes, the limit")
    assert lines[1].startswith(f"digitsjax: error: {fifo} is a pipe, not a regular file")
    assert lines[2].startswith(f"{seven}: {labels[0]} ")
    assert lines[3].startswith(f"digitsjax: error: {folder} is a folder")
    assert lines[4].startswith(f"digitsjax: error: {bomb} ") and "pixels" in lines[4]
