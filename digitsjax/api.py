"""digitsjax from Python: train a pipeline, load a trained network, classify arrays or pictures.

The command line is a thin layer over the package; this module is the same for notebooks and
other programs, with plain types in and out (paths, lists of overrides, NumPy arrays, dicts).
Importing it changes nothing in the process; a mistake raises a `digitsjax.errors.UserError`
whose message says what is wrong and how to fix it. Where a list of overrides or of pictures
is taken, one string (or path) is one item, never its characters one by one.

    from digitsjax import api

    final = api.train("pipelines/mnist_mlp.toml", "runs/a", ["train.epochs=3"])
    net = api.load("runs/a")                 # or api.load("runs/a", checkpoint="best")
    net.classify(images)                     # (N, 28, 28) or (N, 784) in [0, 1] -> (N,) digits
    api.classify_files(net, ["digit.png"])   # pictures, one answer per file
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from digitsjax.apps.evaluate import evaluate_trained
from digitsjax.apps.predict import FileAnswer, predict_files
from digitsjax.apps.sweep import locate_point
from digitsjax.core.config import Pipeline, load_pipeline
from digitsjax.errors import render
from digitsjax.files import default_workdir
from digitsjax.run.loop import train_pipeline
from digitsjax.run.mnist import load_mnist
from digitsjax.run.trained import Network, load_network, refuse_points_ensemble
from digitsjax.run.workdir import Workdir


def train(pipeline: str | Path | Pipeline, workdir: str | Path | None = None,
          overrides: Sequence[str] | str = (), *, restart: bool = False,
          mnist_dir: str | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `pipeline` (a TOML file, or a `Pipeline`) into `workdir`, continuing what is there.

    `overrides` are `section.key=value` strings, as `--set` takes them (one string is one
    override). The workdir defaults to checkpoints/<pipeline name>. `echo` takes each line of
    progress. Returns the last epoch's record with its `params_sha256`.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    if not isinstance(pipeline, Pipeline):
        pipeline = load_pipeline(pipeline, overrides)
    elif overrides:
        raise TypeError("overrides apply to a pipeline file; change a Pipeline with "
                        "dataclasses.replace")
    workdir = Path(workdir) if workdir is not None else default_workdir(pipeline.name)
    return train_pipeline(pipeline, workdir, mnist_dir=mnist_dir, restart=restart,
                          echo=lambda line: echo(render(line)))  # remedies as Python spells them


def load(workdir: str | Path, checkpoint: str = "latest", *,
         point: int | None = None) -> Network:
    """A trained network from `workdir`: its `latest` or `best` checkpoint, or a step ("858").
    With `point`, `workdir` is a sweep's folder and the network its point N (row N of its
    sweep.csv); a sweep's program folder, whose models are different points, is refused.

    It has `classify` and `probabilities` for arrays, and its `pipeline`, `params` and `step`.
    """
    model = None
    if point is not None:
        workdir, model = locate_point(Path(workdir), point)
    opened = Workdir.open(workdir)
    if model is None:
        refuse_points_ensemble(opened)
    return load_network(opened, str(checkpoint), model)


def classify_files(network: Network,
                   paths: Sequence[str | Path] | str | Path) -> list[FileAnswer]:
    """Pictures (PNG, JPEG), normalised as MNIST's digits were: one answer per file, with its
    `prediction` or its `error` (a bad file costs the others nothing). One path, a string or
    a Path, is one picture."""
    if isinstance(paths, str | Path):
        paths = [paths]
    return predict_files(paths, lambda: network)[1]


def evaluate(network: Network, mnist_dir: str | None = None) -> dict[str, Any]:
    """Test loss and accuracy, per digit, the confusion matrix and the fingerprint."""
    return evaluate_trained(network, load_mnist(network.pipeline.data, mnist_dir))
