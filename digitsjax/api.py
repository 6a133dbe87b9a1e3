"""digitsjax from Python: train a pipeline or a sweep, list runs, load a trained network,
classify arrays or pictures.

The command line is a thin layer over the package; this module is the same for notebooks and
other programs, with plain types in and out. A pipeline is a TOML file's path, a dict of its
tables (the file's schema, as `tomllib` reads it) or a `Pipeline`; overrides are a dict
{"section.key": value} or a list of `section.key=value` strings. Importing it changes nothing
in the process; every mistake raises a `digitsjax.errors.UserError` whose message says what is
wrong and how to fix it, never a bare TypeError. Where a list of overrides or of pictures is
taken, one string (or path) is one item, never its characters one by one.

    from digitsjax import api

    final = api.train({"model": {"hidden": [100]}}, "runs/a", {"train.epochs": 3})
    rows = api.sweep("pipelines/lr_sweep.toml", "runs/lr", {"train.epochs": 1})
    api.runs("runs")                         # one dict per run, as `digitsjax runs` lists them
    net = api.load("runs/a")                 # or api.load("runs/lr", point=3)
    net.classify(images)                     # (N, 28, 28) or (N, 784) in [0, 1] -> (N,) digits
    api.classify_files(net, ["digit.png"])   # pictures, one answer per file
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from digitsjax.apps.evaluate import evaluate_trained
from digitsjax.apps.predict import FileAnswer, predict_files
from digitsjax.apps.runs import RunSummary, list_runs
from digitsjax.apps.runs import compare as compare_runs
from digitsjax.apps.sweep import (
    Grid,
    grid_from_table,
    locate_point,
    make_variants,
    merged_grid,
    run_sweep,
    summarize,
)
from digitsjax.arguments import models_per_program
from digitsjax.core.config import (
    SWEEP_TABLE,
    Overrides,
    Pipeline,
    pipeline_from_tables,
    pipeline_to_dict,
    read_pipeline_file,
)
from digitsjax.errors import ConfigError, UserError, render
from digitsjax.files import DEFAULT_WORKDIR_ROOT, default_workdir
from digitsjax.run.backend import start_backend
from digitsjax.run.loop import train_pipeline
from digitsjax.run.mnist import load_mnist
from digitsjax.run.trained import Network, load_network, refuse_points_ensemble
from digitsjax.run.workdir import Workdir

PipelineSource = str | os.PathLike[str] | Mapping[str, Any] | Pipeline


def resolve(pipeline: PipelineSource, overrides: Overrides | str = ()) -> Pipeline:
    """The validated `Pipeline` that `train` would run: see what a file or dict resolves to,
    or build on it with `dataclasses.replace`. A `[sweep]` table is refused (`sweep` runs it)."""
    raw, name = _tables(pipeline)
    if SWEEP_TABLE in raw:
        raise ConfigError(f"{name} has a [{SWEEP_TABLE}] table: it describes several runs",
                          "run them with api.sweep, or leave the table out to train one")
    return pipeline_from_tables(raw, _listed(overrides), name)


def train(pipeline: PipelineSource, workdir: str | os.PathLike[str] | None = None,
          overrides: Overrides | str = (), *, restart: bool = False,
          mnist_dir: str | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train a pipeline (see `resolve`) into `workdir`, continuing what is there.

    The workdir defaults to checkpoints/<pipeline name>. `echo` takes each line of progress.
    Returns the last epoch's record with its `params_sha256`.
    """
    chosen = resolve(pipeline, overrides)
    where = _workdir(workdir, chosen)
    data = _mnist_dir(mnist_dir)
    start_backend(chosen.train.deterministic)
    return train_pipeline(chosen, where, mnist_dir=data, restart=restart, echo=_spoken(echo))


def sweep(pipeline: PipelineSource, workdir: str | os.PathLike[str] | None = None,
          overrides: Overrides | str = (), *, grid: Mapping[str, list[Any]] | None = None,
          restart: bool = False, mnist_dir: str | None = None,
          max_models_per_program: int | None = None, separate: bool = False,
          echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every point of a grid, as `digitsjax sweep` does; returns sweep.csv's rows as
    dicts (row N is point N: `load(workdir, point=N)`).

    The grid is the pipeline's `[sweep]` table (a file's, or the dict's "sweep" table) plus
    `grid`, {"section.key": [values]} (or ranges, "samples", and the settings of successive
    halving or population-based training, as the table takes them); a `Pipeline` has no
    table, so it takes `grid` alone.
    The folder defaults to checkpoints/<pipeline name>.
    """
    raw, name = _tables(pipeline)
    points = _grid(raw.pop(SWEEP_TABLE, {}), grid, name)
    base = pipeline_from_tables(raw, _listed(overrides), name)
    make_variants(base, points)  # every point is checked before JAX starts
    where = _workdir(workdir, base)
    if max_models_per_program is not None and (
            type(max_models_per_program) is not int or max_models_per_program < 1):
        raise UserError(f"max_models_per_program must be a whole number >= 1, got "
                        f"{max_models_per_program!r}", "e.g. max_models_per_program=8")
    data = _mnist_dir(mnist_dir)
    start_backend(base.train.deterministic)
    say = _spoken(echo)
    run_sweep(base, points, where, mnist_dir=data, restart=restart, separate=separate,
              echo=say, max_models=models_per_program(max_models_per_program, say,
                                                      "max_models_per_program=N"))
    return summarize(where)[1]


def runs(folder: str | os.PathLike[str] = DEFAULT_WORKDIR_ROOT) -> list[dict[str, Any]]:
    """One dict per run under `folder` (or `folder` itself, if it is a run), by name, as
    `digitsjax runs` lists them: state, epochs, best validation, test and fingerprint as plain
    numbers and strings. A run whose files cannot be read is a row with its `error`."""
    summaries, unreadable = list_runs(_path(folder, "folder", "'checkpoints'"))
    rows = [dataclasses.asdict(s) | {"workdir": str(s.workdir), "error": None}
            for s in summaries]
    blank = dict.fromkeys(f.name for f in dataclasses.fields(RunSummary))
    rows += [blank | {"workdir": str(path), "state": "unreadable", "error": str(error)}
             for path, error in unreadable.items()]
    return sorted(rows, key=lambda row: row["workdir"])


def compare(workdirs: Sequence[str | os.PathLike[str]],
            plot: str | os.PathLike[str] | None = None) -> tuple[str, Path]:
    """Runs side by side, as `digitsjax compare`: the table of the pipeline keys that differ and
    the results, and the path of the plot of their curves (FIRST/plots/compare.png, or `plot`,
    a new .png file)."""
    if isinstance(workdirs, str | os.PathLike) or not isinstance(workdirs, Sequence) \
            or not workdirs:
        raise UserError(f"workdirs must be a list of run folders, got {workdirs!r}",
                        "e.g. api.compare(['checkpoints/a', 'checkpoints/b'])")
    opened = [Workdir.open(_path(w, "each workdir", "'checkpoints/a'")) for w in workdirs]
    return compare_runs(opened, None if plot is None else _path(plot, "plot", "'compare.png'"))


def load(workdir: str | os.PathLike[str], checkpoint: str | int = "latest", *,
         point: int | None = None) -> Network:
    """A trained network from `workdir`: its `latest` or `best` checkpoint, or a step (858).
    With `point`, `workdir` is a sweep's folder and the network its point N (row N of its
    sweep.csv); a sweep's program folder, whose models are different points, is refused.

    It has `classify` and `probabilities` for arrays, and its `pipeline`, `params` and `step`.
    """
    where = _path(workdir, "workdir", "'checkpoints/mnist_mlp'")
    if type(checkpoint) not in (str, int):
        raise UserError(f"checkpoint must be 'latest', 'best' or a step, got {checkpoint!r}",
                        "e.g. checkpoint='best'")
    model = None
    if point is not None:
        if type(point) is not int:
            raise UserError(f"point must be a whole number, got {point!r}",
                            "e.g. point=3, a row of the sweep's sweep.csv")
        where, model = locate_point(where, point)
    opened = Workdir.open(where)
    if model is None:
        refuse_points_ensemble(opened)
    return load_network(opened, str(checkpoint), model)


def classify_files(network: Network,
                   paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]
                   ) -> list[FileAnswer]:
    """Pictures (PNG, JPEG), normalised as MNIST's digits were: one answer per file, with its
    `prediction` or its `error` (a bad file costs the others nothing). One path, a string or
    a Path, is one picture."""
    _check_network(network)
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not isinstance(paths, Sequence):
        raise UserError(f"paths must be a picture's path or a list of them, got {paths!r}",
                        "e.g. ['digit.png']")
    return predict_files([_path(p, "each picture", "'digit.png'") for p in paths],
                         lambda: network)[1]


def evaluate(network: Network, mnist_dir: str | None = None) -> dict[str, Any]:
    """Test loss and accuracy, per digit, the confusion matrix and the fingerprint."""
    _check_network(network)
    return evaluate_trained(network, load_mnist(network.pipeline.data, _mnist_dir(mnist_dir)))


def _tables(source: PipelineSource) -> tuple[dict[str, Any], str]:
    """A pipeline's tables as plain data (a copy), and what errors call it."""
    if isinstance(source, Pipeline):
        return pipeline_to_dict(source), "the pipeline"
    if isinstance(source, Mapping):
        return dict(source), "the pipeline dict"
    if isinstance(source, str | os.PathLike):
        path = _path(source, "a pipeline", "'pipelines/mnist_mlp.toml'")
        raw = read_pipeline_file(path)
        raw.setdefault("name", path.stem)
        return raw, str(path)
    raise ConfigError(f"a pipeline must be a TOML file's path, a dict of its tables or a "
                      f"Pipeline, got {type(source).__name__} {source!r}",
                      "e.g. 'pipelines/mnist_mlp.toml' or {'train': {'epochs': 3}}")


def _listed(overrides: Overrides | str) -> Overrides:
    """One string is one override."""
    return [overrides] if isinstance(overrides, str) else overrides


def _grid(table: Any, more: Mapping[str, list[Any]] | None, name: str) -> Grid:
    """The `[sweep]` table's grid and the `grid` argument's keys, each key given once."""
    if more is None:
        more = {}
    if not isinstance(more, Mapping):
        raise ConfigError(f"grid must be a dict {{'section.key': [values]}}, got {more!r}",
                          "e.g. grid={'optimizer.learning_rate': [0.01, 0.1]}")
    points = merged_grid(table, more.items(), name, lambda key: f"grid key {key!r}",
                         "give them all in grid")
    if not points:
        raise ConfigError(f"{name} has no [{SWEEP_TABLE}] table, and no grid was given",
                          "e.g. grid={'optimizer.learning_rate': [0.01, 0.1]}")
    return grid_from_table(points, f"{name} with its grid" if more else name)


def _workdir(workdir: Any, chosen: Pipeline) -> Path:
    if workdir is None:
        return default_workdir(chosen.name)
    return _path(workdir, "workdir", "'checkpoints/mnist_mlp'")


def _path(value: Any, what: str, example: str) -> Path:
    if isinstance(value, str | os.PathLike) and str(value):
        return Path(value)
    raise UserError(f"{what} must be a path (a str or pathlib.Path), got {value!r}",
                    f"e.g. {example}")


def _mnist_dir(mnist_dir: Any) -> str | None:
    if mnist_dir is None:
        return None
    return str(_path(mnist_dir, "mnist_dir", "'data/mnist', or leave it out"))


def _spoken(echo: Callable[[str], None]) -> Callable[[str], None]:
    """`echo` with the remedies of each line spelled as Python spells them."""
    return lambda line: echo(render(line))


def _check_network(network: Any) -> None:
    if not isinstance(network, Network):
        raise UserError(f"expected a trained network, got {type(network).__name__}",
                        "load one with api.load(workdir)")
