"""Classify pictures of digits with a trained workdir: the engine behind `predict` and `serve`.

Every picture goes through `imaging.load_digit` (MNIST's own normalisation) and then through
one compiled forward pass; the 28x28 image the network saw is returned with the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitsjax.apps.imaging import load_digit, load_digit_files
from digitsjax.errors import LIBRARY, ImageError

if TYPE_CHECKING:  # `serve` imports this module for its CLI defaults without loading JAX
    from digitsjax.run.trained import Network


@dataclass(frozen=True)
class Prediction:
    digit: int
    probabilities: list[float]
    """One per digit 0-9, summing to one."""
    input: np.ndarray
    """The (28, 28) image in [0, 1] that the network classified."""

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        order = np.argsort(self.probabilities)[::-1][:k]
        return [(int(d), self.probabilities[d]) for d in order]

    def to_json(self) -> dict[str, Any]:
        return {"digit": self.digit, "probabilities": self.probabilities,
                "input": np.round(self.input, 4).tolist()}


def predictions(network: Network, digits: np.ndarray) -> list[Prediction]:
    """(N, 28, 28) MNIST-normalised images -> one `Prediction` each, in one forward pass."""
    probs = network.probabilities(digits)
    return [Prediction(digit=int(p.argmax()), probabilities=p.tolist(), input=digit)
            for p, digit in zip(probs, digits, strict=True)]


def predict_bytes(network: Network, data: bytes, name: str = "image",
                  max_pixels: int | None = None) -> Prediction:
    """One picture file's bytes (PNG, JPEG) -> its `Prediction`."""
    return predictions(network, load_digit(data, name, max_pixels)[None])[0]


@dataclass(frozen=True)
class FileAnswer:
    """One picture file's outcome: its prediction, or the error naming what is wrong with it."""

    path: str
    prediction: Prediction | None = None
    error: ImageError | None = None

    def to_json(self, spelling: Mapping[str, str] = LIBRARY) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.path, "error": self.error.render(spelling)}
        assert self.prediction is not None
        return {"image": self.path, "digit": self.prediction.digit,
                "probabilities": self.prediction.probabilities,
                "top3": [{"digit": d, "probability": q} for d, q in self.prediction.top(3)]}


def predict_files(paths: Sequence[str | Path], load: Callable[[], Network]
                  ) -> tuple[Network | None, list[FileAnswer]]:
    """Each file's answer, in the order given, and the network (None when no file held a
    picture). Every file is read first, so a bad one costs the others nothing and the network,
    `load()`, is loaded only when there is something to classify; the pictures then go through
    one forward pass together."""
    digits = load_digit_files(paths)
    good = [digit for digit in digits if not isinstance(digit, ImageError)]
    network = load() if good else None
    answers = iter(predictions(network, np.stack(good)) if network else [])
    return network, [FileAnswer(str(path), error=digit) if isinstance(digit, ImageError)
                     else FileAnswer(str(path), prediction=next(answers))
                     for path, digit in zip(paths, digits, strict=True)]


def prediction_line(answer: FileAnswer) -> str:
    """A classified file as `PATH: DIGIT    (D: P%  D: P%  D: P%)`, its three likeliest digits."""
    assert answer.prediction is not None
    top = "  ".join(f"{d}: {100 * q:5.1f}%" for d, q in answer.prediction.top(3))
    return f"{answer.path}: {answer.prediction.digit}    ({top})"


def answers_json(network: Network | None, answers: list[FileAnswer],
                 spelling: Mapping[str, str] = LIBRARY) -> dict[str, Any]:
    """Every file's answer in one object, with the step of the checkpoint that gave them (None
    when no file held a picture); errors name their remedies in `spelling`."""
    return {"step": network.step if network else None,
            "predictions": [answer.to_json(spelling) for answer in answers]}
