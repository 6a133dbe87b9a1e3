"""What the `digitsjax` command's arguments mean: the types that refuse a bad value in one line,
and the library's values that a command's arguments name (a pipeline and its workdir, a sweep's
point, the sweep's models per program, a new picture's path).

The command line's own module, beside digitsjax.cli: nothing here loads JAX when imported.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from digitsjax.errors import COMMAND_LINE, ConfigError, UserError, render
from digitsjax.files import default_workdir

if TYPE_CHECKING:
    from digitsjax.core.config import Pipeline
    from digitsjax.run.trained import Network
    from digitsjax.run.workdir import Workdir

PREVIEW_COUNT, MAX_PREVIEW_COUNT = 30, 200
"""`digitsjax augment-preview --count`: its default (apps.plots.AUGMENT_COUNT) and limit."""


def version() -> str:
    """The installed package's version: the one every workdir's manifest records."""
    from importlib import metadata

    try:
        return metadata.version("digitsjax")
    except metadata.PackageNotFoundError:  # a source tree run without installing it
        return "(not installed)"


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a finite number of `kind` above zero."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive {kind.__name__}")
        return value

    return parse


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def point_number(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a point number (0, 1, 2, ...)")
    return value


def preview_count(text: str) -> int:
    count = int(positive(int)(text))
    if count > MAX_PREVIEW_COUNT:
        raise argparse.ArgumentTypeError(f"{count} digits are too many to draw (at most "
                                         f"{MAX_PREVIEW_COUNT})")
    return count


def resolve_point(args: argparse.Namespace) -> None:
    """`SWEEPDIR --point N`: the workdir holding point N, and its model there (the sweep's
    folder stays in `args.sweep_dir`)."""
    args.model = None
    if getattr(args, "point", None) is not None:
        from digitsjax.apps.sweep import locate_point

        args.sweep_dir = args.workdir
        args.workdir, args.model = locate_point(args.workdir, args.point)


def start_backend_for(workdir: Workdir) -> None:
    """Start JAX for `workdir`'s recorded pipeline (its determinism first, as `load_network`
    does), so that a platform JAX cannot start is one line before anything loads."""
    from digitsjax.run.backend import start_backend

    start_backend(workdir.pipeline.train.deterministic)


def named_workdir(args: argparse.Namespace) -> Workdir:
    """The workdir a command's arguments name, opened once: its manifest read and parsed."""
    from digitsjax.run.workdir import Workdir

    return Workdir.open(args.workdir)


def named_network(args: argparse.Namespace, workdir: Workdir | None = None) -> Network:
    """The network a command's workdir, point and checkpoint arguments name, JAX started first;
    a sweep's program folder without a point is refused."""
    from digitsjax.run.trained import load_network, refuse_points_ensemble

    workdir = workdir or named_workdir(args)
    if args.model is None:
        refuse_points_ensemble(workdir)
    start_backend_for(workdir)
    return load_network(workdir, args.checkpoint, args.model)


def pipeline_and_workdir(args: argparse.Namespace) -> tuple[Pipeline, Path]:
    """A pipeline file and its workdir; or a workdir in its place, with its recorded pipeline."""
    from digitsjax.core.config import load_pipeline, override_pipeline

    if args.pipeline.is_dir():
        from digitsjax.run.workdir import MANIFEST, Workdir

        if not (args.pipeline / MANIFEST).exists():
            raise ConfigError(f"pipeline {args.pipeline} is a folder, and not a digitsjax "
                              f"workdir to continue (it has no {MANIFEST})",
                              "pass a path such as pipelines/mnist_mlp.toml")

        recorded = Workdir.open(args.pipeline).pipeline
        return (override_pipeline(recorded, args.overrides, str(args.pipeline)),
                args.workdir or args.pipeline)
    pipeline = load_pipeline(args.pipeline, args.overrides)
    return pipeline, args.workdir or default_workdir(pipeline.name)


def check_new_png(out: Path) -> None:
    """Refuse an output path that is not a .png, already exists, or lies in no folder."""
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} does not end in .png", "the picture is a PNG: give a "
                        "path such as preview.png")
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} already exists", "choose another --out, or delete it first")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: there is no folder {out.parent}",
                        "create it, or choose another --out")


def models_per_program(flag: int | None, say: Callable[[str], None] = print,
                       option: str = "--max-models-per-program"
                       ) -> Callable[[Pipeline, int], int]:
    """The sweep's cap on models per program: the flag's (`option`), or what memory holds,
    said aloud."""
    from digitsjax.core import sharding
    from digitsjax.run.resources import max_models_that_fit

    def cap(pipeline: Pipeline, wanted: int) -> int:
        if flag is not None:
            return min(flag, wanted)
        fit = max_models_that_fit(pipeline, sharding.data_mesh(), wanted)
        if fit < wanted:
            say(f"sweep: {wanted} points share a program; memory holds {fit} at a time "
                f"({option} sets it)")
        return fit
    return cap


def say(line: str) -> None:
    """A line of a command's progress on stdout, its remedies (errors.RESTART) spelled as
    flags, as an error's are."""
    print(render(line, COMMAND_LINE))
