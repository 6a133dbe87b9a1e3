"""Sweeps: one pipeline trained at every point of a grid, the points of one program at once.

The grid comes from `--grid KEY=[v1, v2, ...]` options (TOML values) and the pipeline's
`[sweep]` table, each key from one of them; several keys make their cartesian product. A
variant is the base pipeline with those keys set.

Variants that differ only in per-model keys (`core.hyper.PER_MODEL`: learning rate and the
other numbers of the optimizer, dropout, max-norm, augmentation strengths, seed) share a
program: they train together as the models of one vmapped run, `SWEEPDIR/program-<i>`, as many
at a time as fit in memory. A variant alone in its program trains as a plain run into
`SWEEPDIR/<variant>`. `sweep.json` records which workdir and model holds each variant; the
summary is read back from the workdirs, so re-running an interrupted sweep resumes what is
unfinished and rewrites the same table.

The table may also say how to search (`SETTINGS`): successive halving (core/halving.py) and
population-based training (core/population.py) train in stages, each a program of the stage's
points continuing their states from the stage before (`SWEEPDIR/stage-<n>-...`), and decide
between stages from the validation accuracies the points recorded, never from timing.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import fnmatch
import functools
import io
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from digitsjax.core import sharding
from digitsjax.core.config import (
    SWEEP_TABLE,
    Pipeline,
    parse_value,
    pipeline_from_dict,
    pipeline_to_dict,
    read_pipeline_file,
    set_key,
)
from digitsjax.core.halving import (
    KEEP,
    RUNGS,
    Halving,
    check_keep,
    check_rungs,
    halving_of,
    survivors,
)
from digitsjax.core.hyper import PER_MODEL, SEED, with_values
from digitsjax.core.model import parameter_count
from digitsjax.core.population import (
    BOUNDS,
    EVERY,
    FRACTION,
    PERTURB,
    Exploit,
    Population,
    check_every,
    check_fraction,
    check_perturb,
    exploit,
    population_of,
)
from digitsjax.core.program import (
    Program,
    continued_state,
    model_states,
    program_key,
    sweep_program,
)
from digitsjax.core.sampling import SAMPLERS, SAMPLES, Samples, check_range, draw, is_range
from digitsjax.core.train import TrainState
from digitsjax.errors import WORKDIR, ConfigError, FileError, UserError, render
from digitsjax.files import LEDGER, OwnedFolder, a_few, cannot_write
from digitsjax.run import backend, cluster
from digitsjax.run.lock import LOCK, workdir_lock
from digitsjax.run.loop import train_program
from digitsjax.run.records import last_evaluated, model_record, read_metrics
from digitsjax.run.resources import check_memory
from digitsjax.run.trained import trained_state
from digitsjax.run.workdir import MANIFEST, PLOTS_DIR, Workdir

SWEEP_JSON = "sweep.json"
SUMMARY_CSV = "sweep.csv"
SUMMARY_MARKDOWN = "sweep.md"
RESULTS_JSON = "sweep-results.json"
CHART = "sweep.png"
RESULT_COLUMNS = ("parameters", "epochs", "train_loss", "train_accuracy", "val_accuracy",
                  "test_loss", "test_accuracy", "train_seconds", "diverged_at", "params_sha256")
PROGRAM_DIR = "program-{}"
STAGE_DIR = "stage-{}-"
"""What starts the name of a stage's workdirs (`stage-2-program-1`): successive halving and
population-based training train in stages."""
SWEEP_ENTRIES: dict[str, str] = {
    SWEEP_JSON: "the grid, and which workdir and model holds each point",
    SUMMARY_CSV: "one row per point", SUMMARY_MARKDOWN: "the same table to read",
    RESULTS_JSON: "the same rows, and the best point", PLOTS_DIR: "the sweep's charts",
    PROGRAM_DIR.format("*"): "a program's workdir: the points that train together",
    STAGE_DIR.format("*"): "a stage's workdir (successive halving, population-based training)",
    LOCK: "who is running the sweep now (run.lock): a sweep folder is locked as a whole",
    LEDGER: "what digitsjax wrote here (files.OwnedFolder): what it may replace",
}
"""What a sweep writes in its folder besides its points' own workdirs (each named in
sweep.json, and a `run.workdir.Workdir` of its own)."""
SUMMARY = (SUMMARY_CSV, SUMMARY_MARKDOWN, RESULTS_JSON)
HALVING = "halving"
"""sweep.json's record of a successive-halving schedule (`Halving.to_json`)."""
POPULATION = "population"
"""sweep.json's record of a population-based training schedule (`Population.to_json`)."""
COPIED_FROM = "copied_from"
"""A population member's exploit steps in the summary: [epoch, parent] each."""
COPIED = "copied"
"""A point's exploit steps in sweep.json (`Exploit.to_json`): whose state it took when, and its
values before and after."""
STOPPED_AT = "stopped_at"
"""The rung (epoch) at which a point stopped, in sweep.json and the summary's rows."""

Grid = dict[str, Any]
"""Each key's list of values; as read, also ranges ({kind: bounds}) and their `samples` count,
which `resolve_grid` draws into lists."""


@dataclass(frozen=True)
class Variant:
    name: str
    """Its name in the summary, e.g. `hidden=128-64` (and its folder, when trained alone)."""
    values: dict[str, Any]
    pipeline: Pipeline


@dataclass(frozen=True)
class SweepProgram:
    """Variants trained together, as the models of one program, in `workdir`."""

    workdir: str
    variants: list[Variant]

    @property
    def program(self) -> Program:
        """The run that trains them: the first variant's pipeline with one model per variant."""
        first = self.variants[0].pipeline
        return sweep_program([v.pipeline for v in self.variants],
                             name=f"{first.name.split('/')[0]}/{self.workdir}")


def parse_grid_option(text: str) -> tuple[str, Any]:
    """`model.hidden=[[15], [30]]` -> ("model.hidden", [[15], [30]]); as in a `[sweep]` table,
    the value may also be a range (`{log_uniform = [1e-4, 1e-1]}`), or a setting of the search
    (`samples=N`, `rungs=[1,3]`, `keep=0.25`)."""
    key, sep, value = text.partition("=")
    key, values = key.strip(), parse_value(value) if sep else None
    listed = isinstance(values, list) and values
    if not key or not (listed or is_range(values) or key in SETTINGS):
        raise ConfigError(f"--grid {text!r} must look like section.key=[value, ...] (or a "
                          "range, section.key={log_uniform=[1e-4,1e-1]}, with samples=N), "
                          "e.g. --grid model.hidden=[[30],[100]]")
    return key, values


def read_grid(pipeline_path: Path, options: Iterable[str]) -> Grid:
    """The pipeline file's `[sweep]` table, plus the keys of the `--grid` options, checked
    together (a range in the table may take its `samples` from an option)."""
    options = list(options)
    table = read_pipeline_file(Path(pipeline_path)).get(SWEEP_TABLE, {})
    grid = merged_grid(table, map(parse_grid_option, options), str(pipeline_path),
                       lambda key: f"--grid {key!r}", "list them all in one --grid")
    if not grid:
        raise ConfigError(f"{pipeline_path} has no [{SWEEP_TABLE}] table; pass the grid, e.g. "
                          "--grid model.hidden=[[30],[100]]")
    return grid_from_table(grid, f"{pipeline_path} with its --grid options" if options
                           else str(pipeline_path))


def merged_grid(table: Any, extra: Iterable[tuple[str, Any]], source: str,
                named: Callable[[str], str], instead: str) -> Grid:
    """A `[sweep]` table's keys (flattened, not checked yet) and the `extra` ones (`--grid`
    options, the Python API's `grid`), each key given once: were a second list to replace the
    first, or add to it, one of them would be silently ignored or the grid would not be the one
    the user read. `named` spells a key as the caller takes it; `instead` ends the remedy."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{SWEEP_TABLE}] must be a table of key = [values] lines")
    grid = dict(_flatten(table))
    from_table = set(grid)
    for key, values in extra:
        if key in from_table:
            raise ConfigError(f"{named(key)} is also in the [{SWEEP_TABLE}] table of {source}",
                              f"give its values in one place: edit the table, or remove the "
                              f"key from it and {instead}")
        if key in grid:
            both = [*grid[key], *values] if isinstance(values, list) and \
                isinstance(grid[key], list) else values
            raise ConfigError(f"{named(key)} is given twice", "list all its values in one "
                              f"--grid, e.g. --grid {key}={_compact(both)}")
        grid[key] = values
    return grid


def grid_from_table(table: Any, source: str) -> Grid:
    """A `[sweep]` table (keys nested or dotted) as a grid: each key a non-empty list of
    values, or a range to draw `samples = N` points from (`core.sampling`); and the search's
    settings (`SETTINGS`)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{SWEEP_TABLE}] must be a table of key = [values] lines")
    grid = dict(_flatten(table))
    for key, values in grid.items():
        if key in SETTINGS:
            SETTINGS[key](values, source)
        elif is_range(values):
            check_range(key, values, source)
        elif not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: [{SWEEP_TABLE}] {key} must be a non-empty list of "
                              f"values or a range, e.g. {key} = [[30], [100]] or "
                              f"{key} = {{choice = [[30], [100]]}}")
    _check_together(grid, source)
    return grid


def _check_together(grid: Grid, source: str) -> None:
    """What a table's keys must say together: how many points to draw from its ranges, and
    at least one key to search."""
    ranged = [key for key, values in grid.items() if is_range(values)]
    if ranged and SAMPLES not in grid:
        raise ConfigError(f"{source}: [{SWEEP_TABLE}] draws {', '.join(ranged)} from a range "
                          "but says not how many points", f"add e.g. {SAMPLES} = 16 to it")
    if SAMPLES in grid and not ranged:
        raise ConfigError(f"{source}: [{SWEEP_TABLE}] {SAMPLES} is given, but no key has a "
                          f"range to draw from (a table of one of {', '.join(SAMPLERS)})",
                          "give a range, e.g. optimizer.learning_rate = "
                          f"{{log_uniform = [1e-4, 1e-1]}}, or remove {SAMPLES}")
    if grid and set(grid) <= set(SETTINGS):
        raise ConfigError(f"{source}: [{SWEEP_TABLE}] says how to search but lists no key to "
                          "search", "add one, e.g. optimizer.learning_rate = [1e-3, 3e-3]")


def _check_samples(count: Any, source: str) -> None:
    if not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
        raise ConfigError(f"{source}: [{SWEEP_TABLE}] {SAMPLES} must be a whole number >= 1, "
                          f"got {count!r}", f"e.g. {SAMPLES} = 16")


SETTINGS: dict[str, Callable[[Any, str], None]] = {
    SAMPLES: _check_samples, RUNGS: check_rungs, KEEP: check_keep, EVERY: check_every,
    FRACTION: check_fraction, PERTURB: check_perturb}
"""The `[sweep]` keys that are no pipeline's keys but say how to search, and their checks."""


def resolve_grid(grid: Grid, seed: int) -> Grid:
    """The grid with its ranges drawn (`samples` points, from the pipeline's `seed`) and the
    search's settings left out: every key a list, the drawn ones `Samples`."""
    ranges = {key: values for key, values in grid.items() if is_range(values)}
    drawn = draw(ranges, grid[SAMPLES], seed) if ranges else {}
    return {key: drawn.get(key, values) for key, values in grid.items() if key not in SETTINGS}


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    """Every point of a resolved grid, in its keys' order: the product of its lists, the drawn
    keys read together (sample i of each) as one more factor, placed where the first is."""
    drawn = [key for key, values in grid.items() if isinstance(values, Samples)]
    axes: dict[str, list[dict[str, Any]]] = {}
    for key, values in grid.items():
        if key not in drawn:
            axes[key] = [{key: value} for value in values]
        elif key == drawn[0]:
            axes[key] = [dict(zip(drawn, sample, strict=True))
                         for sample in zip(*(grid[k] for k in drawn), strict=True)]
    return [{key: merged[key] for key in grid}
            for merged in (functools.reduce(dict.__or__, factors, {})
                           for factors in itertools.product(*axes.values()))]


def _compact(values: list[Any]) -> str:
    """`values` as one shell word of TOML: `[0,1,2]`, `[[30],[100]]`."""
    return json.dumps(values, separators=(",", ":"), default=str)


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """TOML's `model.hidden = [...]` inside [sweep] is a nested table: flatten it to keys."""
    for key, value in table.items():
        if isinstance(value, dict) and not is_range(value):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


SCHEDULES: dict[type, str] = {Halving: HALVING, Population: POPULATION}
"""Each schedule's record in sweep.json."""
SCHEDULE_NAMES: dict[type, str] = {Halving: "successive halving",
                                   Population: "population-based training"}


def schedule_of(base: Pipeline, grid: Grid) -> Schedule:
    """How the `[sweep]` table's settings say to train its points: None for a grid."""
    halving = halving_of(grid, base.train.epochs, base.name)
    population = population_of(grid, base.train.epochs, base.name)
    if halving and population:
        raise ConfigError(f"{base.name}: [{SWEEP_TABLE}] asks for successive halving ({RUNGS}) "
                          f"and population-based training ({EVERY}) at once",
                          "choose one of them")
    if population:
        return dataclasses.replace(population, bounds=perturbed_bounds(grid))
    return halving


def perturbed_bounds(grid: Grid) -> dict[str, tuple[float, float]]:
    """The keys population-based training perturbs (the per-model numbers of the grid, the
    seed aside), each with the least and the most value its list or range gives."""
    bounds = {}
    for key, values in grid.items():
        if key in SETTINGS or key == SEED or key not in PER_MODEL:
            continue
        listed = next(iter(values.values())) if is_range(values) else values
        bounds[key] = (min(listed), max(listed))
    return bounds


def _check_population(grid: Grid) -> None:
    """A population trains as one program, and exploits by copying states: its points may
    differ only in per-model numbers, some of which it perturbs."""
    shapes = [key for key in grid if key not in SETTINGS and key not in PER_MODEL]
    if shapes:
        raise ConfigError(f"population-based training copies states between points, but "
                          f"{shapes[0]} changes their shapes or code",
                          f"search {shapes[0]} with a grid or successive halving; a population "
                          f"searches numbers: {', '.join(k for k in PER_MODEL if k != SEED)}")
    if not perturbed_bounds(grid):
        raise ConfigError("population-based training perturbs its points' numbers, but the "
                          "grid gives none (a seed is not perturbed)",
                          "add one, e.g. optimizer.learning_rate = {log_uniform = [1e-4, 1e-2]}")


def make_variants(base: Pipeline, grid: Grid) -> list[Variant]:
    """Every point of the grid as a validated pipeline, before anything is trained (and the
    search's settings checked against it)."""
    schedule = schedule_of(base, grid)
    variants, base_raw = [], pipeline_to_dict(base)
    for values in grid_points(resolve_grid(grid, base.seed)):
        name = ",".join(f"{key.rsplit('.', 1)[-1]}={_label(v)}" for key, v in values.items())
        raw = copy.deepcopy(base_raw)
        for key, value in values.items():
            set_key(raw, key, value, option="--grid")
        raw["name"] = f"{base.name}/{name}"
        pipeline = pipeline_from_dict(raw, source=f"sweep variant {name}")
        variants.append(Variant(name=name, values=values, pipeline=pipeline))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"the grid gives two variants the same name ({', '.join(twice)})",
                          "list each value once; a range that draws the same point twice "
                          f"(few whole numbers or choices) needs fewer {SAMPLES}, or lists")
    if isinstance(schedule, Population):
        _check_population(grid)
    return variants


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(_label(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _listed(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SWEEP_ENTRIES)


def plan_programs(variants: list[Variant], max_models: Callable[[Pipeline, int], int],
                  separate: bool = False, prefix: str = "") -> list[SweepProgram]:
    """Group the variants by program, in grid order, each group cut into runs of at most
    `max_models(pipeline, wanted)` models; `separate` trains every variant alone. `prefix`
    starts each workdir's name (a stage's, `stage-2-`)."""
    groups: dict[str, list[Variant]] = {}
    for variant in variants:
        key = variant.name if separate else program_key(variant.pipeline)
        groups.setdefault(key, []).append(variant)
    programs: list[SweepProgram] = []
    for members in groups.values():
        size = max_models(members[0].pipeline, len(members)) if len(members) > 1 else 1
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            workdir = chunk[0].name if len(chunk) == 1 else \
                PROGRAM_DIR.format(sum(len(p.variants) > 1 for p in programs) + 1)
            programs.append(SweepProgram(prefix + workdir, chunk))
    return programs


Schedule = Halving | Population | None
"""How a sweep trains its points: a grid (None), successive halving or population-based
training."""


@dataclass(frozen=True)
class _Search:
    """What a sweep trains, stage by stage: a grid is one stage, to `train.epochs`; successive
    halving (core/halving.py) has one more per rung, each over the survivors of the last;
    population-based training (core/population.py) one per exploit step, each over the whole
    population with the values and states its exploit step gave."""

    variants: list[Variant]
    schedule: Schedule
    max_models: Callable[[Pipeline, int], int]
    separate: bool

    @property
    def stops(self) -> tuple[int, ...]:
        epochs = self.variants[0].pipeline.train.epochs
        return self.schedule.stops(epochs) if self.schedule else (epochs,)

    def programs(self, stage: int, variants: list[Variant]) -> list[SweepProgram]:
        """Stage `stage`'s programs (from 1), over `variants` (the stage's points)."""
        prefix = STAGE_DIR.format(stage) if self.schedule else ""
        return plan_programs(variants, self.max_models, self.separate, prefix)

    def work_after(self, stage: int, points: int) -> float:
        """The model-epochs of the stages after `stage` (from 1), when `points` start it: the
        i-th stage after it trains `counts[i]` points, counted from this stage's."""
        counts = self.schedule.counts(points) if isinstance(self.schedule, Halving) else \
            [points] * len(self.stops)
        starts = (0, *self.stops)
        return float(sum(counts[s - stage + 1] * (starts[s + 1] - starts[s])
                         for s in range(stage, len(self.stops))))


def run_sweep(base: Pipeline, grid: Grid, sweep_dir: Path, *, mnist_dir: str | None = None,
              restart: bool = False, progress: bool = False,
              echo: Callable[[str], None] | None = None,
              max_models: Callable[[Pipeline, int], int] | None = None,
              separate: bool = False) -> list[Path]:
    """Train every variant, the variants of one program together (and, with successive
    halving or population-based training, stage by stage); write and return the summary
    files. `max_models(pipeline, wanted)` caps the models per program (default: all).

    The sweep holds its folder's lock throughout (a sweep folder is locked as a whole, and its
    points' workdirs each by their own), and writes there only through the folder's ledger: a
    folder that is neither new, empty nor a sweep's, and a file of the user's with the name of
    one a sweep writes, are refused before anything is written.

    Several processes (`cluster.initialize`) run it together: every one trains the same
    programs in the same order, and process 0 alone writes the sweep folder's own files and
    says what happens; the others return no paths.
    """
    schedule = schedule_of(base, grid)
    return search(base, resolve_grid(grid, base.seed), schedule, sweep_dir, max_models=max_models,
                  separate=separate, echo=echo,
                  options=dict(mnist_dir=mnist_dir, restart=restart, progress=progress))


def search(base: Pipeline, grid: Grid, schedule: Schedule, sweep_dir: Path, *,
           max_models: Callable[[Pipeline, int], int] | None = None, separate: bool = False,
           echo: Callable[[str], None] | None = None,
           options: dict[str, Any] | None = None) -> list[Path]:
    """`run_sweep` of a resolved grid (every key a list), with its `schedule` given: what a
    replay of a recorded sweep runs (apps/verify.py). `options` go to `train_program`."""
    variants = make_variants(base, grid)
    found = _Search(variants, schedule, _shared_cap(max_models or (lambda _, wanted: wanted)),
                    separate)
    first = found.programs(1, found.variants)
    backend.request_determinism(base.train.deterministic)  # before the check starts JAX
    for planned in first:  # one that cannot fit is refused before anything is written
        check_memory(planned.program, sharding.data_mesh())
    echo = echo or (lambda line: print(render(line)))  # remedies as Python spells them
    if not cluster.is_primary():
        echo = cluster.silent  # process 0 alone says what the sweep does
    record = {"pipeline": pipeline_to_dict(base), "grid": grid} | (
        {SCHEDULES[type(schedule)]: schedule.to_json()} if schedule else {})
    with _held_sweep_folder(Path(sweep_dir), first, echo) as folder:
        echo(f"sweep: {len(variants)} points in {len(first)} program(s)"
             f"{'' if separate else ' (points that differ only in per-model keys train together)'}"
             + (f", {len(found.stops)} stages of {SCHEDULE_NAMES[type(schedule)]}"
                if schedule else ""))
        _train_stages(found, folder, record, echo, options or {})
        if not cluster.is_primary():
            return []
        paths = write_summary(folder.path)
    best = best_point(summarize(folder.path)[1])
    if best is not None:
        now = [f"{key.removeprefix('final_').rsplit('.', 1)[-1]} {value:g}"
               for key, value in best.items() if key.startswith("final_")]
        echo(f"best point by validation accuracy: {best['variant']} "
             + (f"(its values now: {', '.join(now)}) " if now else "")
             + f"({100 * best['val_accuracy']:.2f}%, test {100 * best['test_accuracy']:.2f}%)")
    return paths


def recorded_search(sweep_dir: Path) -> tuple[Pipeline, Grid, Schedule]:
    """What a sweep folder's sweep.json says was searched: its base pipeline, its points (as a
    grid whose keys are read together, point i of each: exactly the recorded points) and its
    schedule; what `search` takes to replay it."""
    record = _read_sweep(sweep_dir)
    base = pipeline_from_dict(record["pipeline"], source=str(Path(sweep_dir) / SWEEP_JSON))
    grid = {key: Samples(entry["values"][key] for entry in record["variants"])
            for key in record["grid"]}
    schedule = next((kind.from_json(record[name]) for kind, name in SCHEDULES.items()
                     if name in record), None)
    return base, grid, schedule


def _train_stages(search: _Search, folder: OwnedFolder, record: dict[str, Any],
                  echo: Callable[[str], None], options: dict[str, Any]) -> None:
    """Train each stage's programs, each stage continuing its points' states from the last;
    between stages, successive halving keeps the best points and population-based training
    lets the worst copy the best (`_between`). sweep.json says, before each stage, where every
    point is, and at the end, what the search did."""
    entries = [{"name": v.name, "values": v.values} for v in search.variants]
    now, start = {i: v for i, v in enumerate(search.variants)}, 0
    parents: dict[int, int] = {}  # the point whose state each point continues (its own)
    for stage, stop in enumerate(search.stops, 1):
        programs = search.programs(stage, list(now.values()))
        sources = {p: (entries[parents.get(p, p)]["stages"][-1], entries[p]["stages"][-1])
                   for p in now} if stage > 1 else None
        _place(entries, programs, search.schedule is not None, (start, stop))
        if cluster.is_primary():
            folder.write_json(SWEEP_JSON, record | {"variants": entries})
        if search.schedule:
            echo(f"sweep stage {stage}/{len(search.stops)}: {_count(len(now), 'point')}, "
                 + (f"epoch {stop}" if stop == start + 1 else f"epochs {start + 1} to {stop}"))
        later = search.work_after(stage, len(now))
        for i, planned in enumerate(programs, 1):
            echo(f"sweep program {i}/{len(programs)}: {planned.workdir} "
                 f"({', '.join(v.name for v in planned.variants)})")
            begin = None if sources is None else \
                [sources[p] for p in _points_of(planned, search)]
            train_program(planned.program, _point_workdir(folder, planned.workdir), echo=echo,
                          after=_work_after(programs, i, stop - start, later), stop_epoch=stop,
                          start=_continuing(folder.path, begin, start), **options)
        if stop < search.stops[-1]:
            now, parents = _between(search, folder.path, entries, now, stop, echo)
        start = stop
    if cluster.is_primary():
        folder.write_json(SWEEP_JSON, record | {"variants": entries})


def _between(search: _Search, sweep_dir: Path, entries: list[dict[str, Any]],
             now: dict[int, Variant], epoch: int, echo: Callable[[str], None]
             ) -> tuple[dict[int, Variant], dict[int, int]]:
    """What the next stage trains after the one that ended at `epoch` (its points, as they are
    now), and whose state each continues: for successive halving, the survivors, each its own;
    for population-based training, every point, the copies their parents'."""
    if isinstance(search.schedule, Halving):
        going = _rung(sweep_dir, search.schedule, entries, list(now), epoch, echo)
        return {p: now[p] for p in going}, {}
    copies = _exploit(search, sweep_dir, entries, now, epoch, echo)
    for taken in copies:
        now[taken.member] = _with_values(now[taken.member], taken.after)
    return now, {taken.member: taken.parent for taken in copies}


def _exploit(search: _Search, sweep_dir: Path, entries: list[dict[str, Any]],
             now: dict[int, Variant], epoch: int, echo: Callable[[str], None]) -> list[Exploit]:
    """One exploit step of population-based training, recorded in the copies' entries: a pure
    function of the validation accuracies recorded at `epoch`, the seed and the epoch."""
    population, base = search.schedule, search.variants[0].pipeline
    bounds = population.bounds
    accuracies = _accuracies_at(sweep_dir, [entries[p] for p in sorted(now)], epoch)
    values = [{key: now[p].values[key] for key in bounds} for p in sorted(now)]
    copies = exploit(population, accuracies, values, base.seed, epoch)
    for taken in copies:
        entries[taken.member].setdefault(COPIED, []).append(taken.to_json())
    echo(f"sweep exploit at epoch {epoch}: " + "; ".join(
        f"point {c.member} takes point {c.parent}'s state, "
        + ", ".join(f"{key.rsplit('.', 1)[-1]} {c.after[key]:g}" for key in c.after)
        for c in copies))
    return copies


def _with_values(variant: Variant, values: dict[str, Any]) -> Variant:
    """The variant with some of its values changed (its name, the point's, kept)."""
    return Variant(variant.name, variant.values | values,
                   with_values(variant.pipeline, values))


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing[:-1]}ies" if thing.endswith("y") \
        else f"{n} {thing}s"


def _points_of(planned: SweepProgram, search: _Search) -> list[int]:
    index = {v.name: i for i, v in enumerate(search.variants)}
    return [index[v.name] for v in planned.variants]


def _place(entries: list[dict[str, Any]], programs: list[SweepProgram], staged: bool,
           epochs: tuple[int, int]) -> None:
    """Record in each point's entry the workdir and model that train it now (`staged`: also as
    its latest stage)."""
    entry_of = {entry["name"]: entry for entry in entries}
    for planned in programs:
        for k, variant in enumerate(planned.variants):
            where = _variant_entry(planned, k)
            entry_of[variant.name] |= where
            if staged:
                entry_of[variant.name].setdefault("stages", []).append(
                    {"epochs": list(epochs), **where})


def _rung(sweep_dir: Path, halving: Halving, entries: list[dict[str, Any]], points: list[int],
          epoch: int, echo: Callable[[str], None]) -> list[int]:
    """The points that go on past the rung at `epoch`; the others' entries say they stopped
    there. A pure function of the validation accuracies the points recorded at the rung."""
    accuracies = _accuracies_at(sweep_dir, [entries[p] for p in points], epoch)
    kept = survivors(accuracies, halving.kept(len(points)))
    for j, p in enumerate(points):
        if j not in kept:
            entries[p][STOPPED_AT] = epoch
    going = [points[j] for j in kept]
    echo(f"sweep rung at epoch {epoch}: the best {len(going)} of {len(points)} points by "
         f"validation accuracy go on ({', '.join(entries[p]['name'] for p in going)})")
    return going


def _accuracies_at(sweep_dir: Path, entries: list[dict[str, Any]],
                   epoch: int) -> list[float | None]:
    """Each point's validation accuracy at `epoch`, None for one that diverged or has none
    recorded; each workdir's records read once (a program's K points share them)."""
    at_epoch: dict[Path, dict[str, Any] | None] = {}
    accuracies = []
    for entry in entries:
        workdir = _workdir_of(sweep_dir, entry)
        if workdir not in at_epoch:
            at_epoch[workdir] = next((r for r in read_metrics(workdir) if r["epoch"] == epoch),
                                     None)
        record = at_epoch[workdir]
        own = record if record is None or entry.get("model") is None else \
            model_record(record, entry["model"])
        accuracies.append(None if own is None or own.get("diverged_at", -1) >= 0
                          else own.get("val_accuracy"))
    return accuracies


def _continuing(sweep_dir: Path, sources: list[tuple[dict[str, Any], dict[str, Any]]] | None,
                epoch: int) -> Callable[[Program], TrainState] | None:
    """How a stage's program starts (None: the first stage, from step 0): each point from the
    state at `epoch` of its parent (itself, but for a copy of population-based training), each
    read from the workdir and model that trained it there, with its own root key. A point
    whose parent is itself keeps where it diverged, if it did; a copy starts alive."""
    if sources is None:
        return None

    def start(program: Program) -> TrainState:
        states: dict[str, tuple[list[TrainState], list[int]]] = {}

        def state_of(where: dict[str, Any]) -> tuple[TrainState, int]:
            name = where["workdir"]
            if name not in states:
                workdir = Workdir.open(Path(sweep_dir) / name)
                state = jax.device_get(trained_state(  # sliced on the host: one copy
                    workdir, epoch * workdir.pipeline.steps_per_epoch))
                models = workdir.program.num_models
                states[name] = (model_states(state, models), [-1] * models
                                if state.diverged_at is None else
                                np.asarray(state.diverged_at).tolist())
            models, diverged = states[name]
            return models[where["model"] or 0], diverged[where["model"] or 0]

        parts, diverged = [], []
        for parent, own in sources:
            (taken, _), (kept, stopped) = state_of(parent), state_of(own)
            parts.append(taken.replace(key=kept.key))
            diverged.append(stopped if parent == own else -1)
        return continued_state(program, parts, diverged)
    return start


def _work_after(programs: list[SweepProgram], i: int, epochs: int, later: float) -> float:
    """The model-epochs after program `i` (from 1) of a stage whose programs train `epochs`
    epochs, and the `later` stages', in program i's epochs: what its epoch lines add to their
    own to say the sweep's time left."""
    this_stage = sum(len(p.variants) * epochs for p in programs[i:])
    return (this_stage + later) / len(programs[i - 1].variants)


def _shared_cap(max_models: Callable[[Pipeline, int], int]) -> Callable[[Pipeline, int], int]:
    """`max_models` as every process of the sweep agrees on it, the least any of them says:
    each measures its own memory, yet all must train the same programs in the same order."""
    return lambda pipeline, wanted: cluster.least(max_models(pipeline, wanted))


@contextmanager
def _held_sweep_folder(sweep_dir: Path, programs: list[SweepProgram],
                       echo: Callable[[str], None]) -> Iterator[OwnedFolder]:
    """The sweep folder, prepared and locked by process 0 for as long as the `with` block
    lasts; the other processes wait until it is, as they wait for a workdir
    (`run.workdir.prepared_workdir`), and write nothing there."""
    folder = OwnedFolder(sweep_dir)
    with ExitStack() as held:
        with cluster.prepared_by_primary("sweep folder prepared"):
            if cluster.is_primary():
                folder = _prepare_sweep_folder(sweep_dir, programs)
                held.enter_context(workdir_lock(folder.path, echo))
                folder.record(LOCK)
                _adopt_earlier_sweep(folder)
        yield folder


def _prepare_sweep_folder(sweep_dir: Path, programs: list[SweepProgram]) -> OwnedFolder:
    """The sweep's folder, made: refused, before anything is written, if it is a file, if it
    holds files and is no sweep's, if it holds a file of the user's named as a sweep's summary,
    or if a point's folder name (made of grid values) would leave it or pass a link
    (`OwnedFolder.inside`)."""
    folder = OwnedFolder(sweep_dir)
    for planned in programs:
        folder.inside(planned.workdir)
    if os.path.lexists(sweep_dir) and not sweep_dir.is_dir():
        raise FileError(f"{sweep_dir} is a file, not a folder",
                        f"choose a folder for the sweep with {WORKDIR}")
    earlier = not folder.owns(SWEEP_JSON) and _earlier_sweep(sweep_dir)
    if sweep_dir.is_dir() and not (folder.owns(SWEEP_JSON) or earlier):
        others = sorted(set(os.listdir(sweep_dir)) - {LOCK, LEDGER})
        if others:
            raise FileError(f"{sweep_dir} is not a sweep folder (it has no {SWEEP_JSON} that "
                            f"digitsjax wrote) and holds files ({a_few(others)})",
                            f"sweep into a new or empty folder: choose one with {WORKDIR}")
    check = folder.inside if earlier else folder.checked  # an earlier sweep's: adopted, locked
    for name in (SWEEP_JSON, *SUMMARY):
        check(name)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(sweep_dir, e) from None
    return folder


def _point_workdir(folder: OwnedFolder, name: str) -> Path:
    """A program's workdir in the sweep folder, listed there (by process 0) when the sweep
    makes it."""
    path = folder.inside(name)
    if cluster.is_primary() and not os.path.lexists(path):
        folder.record(f"{name}/")
    return path


def _variant_entry(program: SweepProgram, model: int) -> dict[str, Any]:
    """Where a variant's results live: its program's workdir and, in a program of several,
    its model there (`model`, its place in the program)."""
    return {"workdir": program.workdir, "model": model if len(program.variants) > 1 else None}


def best_point(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the best validation accuracy among those trained and not diverged."""
    done = _finished(rows)
    return max(done, key=lambda r: r["val_accuracy"]) if done else None


def _finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of points that trained to the end and did not diverge: those with results to
    compare (a point stopped at a rung has its results of an earlier epoch)."""
    return [r for r in rows if r["val_accuracy"] is not None and not _diverged(r)
            and r.get(STOPPED_AT) is None]


def _diverged(row: dict[str, Any]) -> bool:
    return row["diverged_at"] is not None and row["diverged_at"] >= 0


def is_sweep(directory: Path) -> bool:
    return (Path(directory) / SWEEP_JSON).is_file()


def refuse_program(workdir: Workdir) -> None:
    """A program's folder holds grid points trained with different numbers: its K-model
    ensemble, what a plain workdir's plots would draw, is nobody's network."""
    if not workdir.program.is_sweep:
        return
    parent = workdir.path.parent
    sweep_dir = parent if is_sweep(parent) else "SWEEPDIR"
    raise UserError(f"{workdir.path} is a program of a sweep: its models are grid points trained "
                    "with different numbers, and their ensemble is nobody's network",
                    f"run `digitsjax plots {sweep_dir}` for the sweep's charts, or "
                    f"`digitsjax plots {sweep_dir} --point N` for point N's network")


def locate_point(sweep_dir: Path, point: int) -> tuple[Path, int | None]:
    """Point N of a sweep (its row N in sweep.csv, from 0): the workdir that holds it, and its
    model there (None when it trained alone)."""
    if not is_sweep(sweep_dir):
        raise UserError(f"{sweep_dir} is not a sweep folder (it has no {SWEEP_JSON}), so it "
                        "has no points", "pass the folder `digitsjax sweep` wrote, or leave "
                        "out --point for a plain workdir")
    variants = _read_sweep(sweep_dir)["variants"]
    if not 0 <= point < len(variants):
        raise UserError(f"{sweep_dir} has {len(variants)} points, so there is no point {point}",
                        f"choose one from 0 to {len(variants) - 1} (the rows of its sweep.csv)")
    return _workdir_of(sweep_dir, variants[point]), variants[point].get("model")


def point_name(sweep_dir: Path, point: int) -> str:
    """Point N's name in the summary (its values, e.g. `learning_rate=0.003,seed=3`)."""
    return _read_sweep(sweep_dir)["variants"][point]["name"]


def summarize(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sweep's description and one row per variant, read from the variants' workdirs
    (each once: a program's K points share its files). With successive halving, a row also
    says at which rung its point stopped (`stopped_at`, None for one trained to the end), and
    its training time is its stages'."""
    sweep = _read_sweep(sweep_dir)
    runs: dict[Path, _TrainedRun | None] = {}

    def run_of(entry: dict[str, Any]) -> _TrainedRun | None:
        workdir = _workdir_of(sweep_dir, entry)
        if workdir not in runs:
            runs[workdir] = _read_run(workdir)
        return runs[workdir]

    rows = []
    for variant in sweep["variants"]:
        row = {"variant": variant["name"], **variant["values"], **dict.fromkeys(RESULT_COLUMNS)}
        row |= _results(run_of(variant), variant.get("model"))
        if "stages" in variant:
            seconds = [run.seconds for stage in variant["stages"]
                       if (run := run_of(stage)) is not None]
            row["train_seconds"] = sum(seconds) if seconds else None
        if HALVING in sweep:
            row[STOPPED_AT] = variant.get(STOPPED_AT)
        if POPULATION in sweep:
            row |= _lineage_columns(variant)
        rows.append(row)
    return sweep, rows


def _lineage_columns(entry: dict[str, Any]) -> dict[str, Any]:
    """A population member's values at the end, and whose state it took at which epoch."""
    final = _schedule(entry)[-1][1]
    return {f"final_{key}": value for key, value in final.items()} | {
        COPIED_FROM: [[c["epoch"], c["parent"]] for c in entry.get(COPIED, [])]}


def _schedule(entry: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """A population member's values from epoch 0 and from each of its exploit steps on."""
    steps = [(0, entry["values"])]
    for c in entry.get(COPIED, []):
        steps.append((c["epoch"], steps[-1][1] | c["after"]))
    return steps


def _read_sweep(sweep_dir: Path) -> dict[str, Any]:
    """sweep.json: the base pipeline, the grid, and where each variant's results live."""
    try:
        record = json.loads((Path(sweep_dir) / SWEEP_JSON).read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise UserError(f"{sweep_dir} is not a readable sweep ({e}); "
                        "run `digitsjax sweep` into it") from None
    if not _is_sweep_record(record):
        raise UserError(f"{Path(sweep_dir) / SWEEP_JSON} is not a sweep's record (its pipeline, "
                        "grid and points)", "run `digitsjax sweep` into a new folder")
    return record


def _is_sweep_record(record: Any) -> bool:
    """Whether `record` holds what digitsjax writes in a sweep.json: its pipeline, grid and
    points, each point named, with its values of the grid's keys."""
    if not (isinstance(record, dict) and isinstance(record.get("pipeline"), dict)
            and isinstance(record.get("grid"), dict)
            and isinstance(record.get("variants"), list) and record["variants"]):
        return False
    return all(isinstance(v, dict) and isinstance(v.get("name"), str)
               and isinstance(v.get("values"), dict) and set(v["values"]) == set(record["grid"])
               and isinstance(v.get("workdir", ""), str) for v in record["variants"])


def sweep_folder(sweep_dir: Path) -> OwnedFolder:
    """The sweep's folder with its ledger, through which every file of the sweep is written;
    one written by an earlier version, without a ledger, is adopted first."""
    folder = OwnedFolder(Path(sweep_dir))
    _adopt_earlier_sweep(folder)
    return folder


def _adopt_earlier_sweep(folder: OwnedFolder) -> None:
    """List, once, what a sweep of an earlier version (without a ledger) wrote in its folder.

    Judged conservatively: only where sweep.json is not listed yet and is a sweep's record as
    digitsjax writes it (`_earlier_sweep`), and then only the entries a sweep writes
    (`SWEEP_ENTRIES`: its summary files, `plots/` and what is in it, its programs' folders)
    and the points' workdirs that sweep.json names, none of them a link. Anything else in the
    folder stays the user's, never replaced.
    """
    if folder.owns(SWEEP_JSON) or not _earlier_sweep(folder.path):
        return
    workdirs = {entry.get("workdir", entry["name"]) for entry in
                _read_sweep(folder.path)["variants"]}
    names = [f"{name}/" for name in sorted(workdirs) if _point_folder(folder, name)]
    for entry in sorted(set(os.listdir(folder.path)) - {LOCK, LEDGER}):
        path = folder.path / entry
        if not _listed(entry) or path.is_symlink():
            continue
        names.append(f"{entry}/" if path.is_dir() else entry)
        if entry == PLOTS_DIR and path.is_dir():  # and what is in it, links left out
            names += [name for name in folder.strangers([PLOTS_DIR])
                      if not folder.path.joinpath(name).is_symlink()]
    folder.record(*names)


def _point_folder(folder: OwnedFolder, name: str) -> bool:
    """Whether the point's workdir `name` is a workdir inside `folder`, reached by no link."""
    try:
        return (folder.inside(name) / MANIFEST).is_file()
    except FileError:
        return False


def _earlier_sweep(sweep_dir: Path) -> bool:
    """Whether `sweep_dir`'s sweep.json is a sweep's record exactly as digitsjax writes it."""
    try:
        return set(_read_sweep(sweep_dir)) == {"pipeline", "grid", "variants"}
    except UserError:
        return False


def _workdir_of(sweep_dir: Path, entry: dict[str, Any]) -> Path:
    """The workdir holding a variant of sweep.json (an entry without one: its own folder)."""
    return Path(sweep_dir) / (entry["workdir"] if "workdir" in entry else entry["name"])


@dataclass(frozen=True)
class _TrainedRun:
    """What the summary reads from a workdir: its manifest, network and epoch records."""

    workdir: Workdir
    records: list[dict[str, Any]]

    @property
    def parameters(self) -> int:
        return parameter_count(self.workdir.pipeline.model)

    @property
    def seconds(self) -> float:
        """The time its epochs took, evaluation and checkpoints aside."""
        return sum(r["epoch_seconds"] for r in self.records)


def _read_run(workdir: Path) -> _TrainedRun | None:
    """A workdir's files, or None for a variant not trained yet."""
    if not (workdir / MANIFEST).is_file():
        return None
    return _TrainedRun(Workdir.open(workdir), read_metrics(workdir))


def _results(run: _TrainedRun | None, model: int | None) -> dict[str, Any]:
    """A variant's result columns from its run (model `model` of a program's)."""
    if run is None:
        return {}
    row: dict[str, Any] = {"parameters": run.parameters}
    final = last_evaluated(run.records)
    if final is None:
        return row
    row |= {"epochs": final["epoch"], "train_seconds": run.seconds}
    result = run.workdir.result
    own = final if model is None else model_record(final, model)
    row |= {key: own[key] for key in RESULT_COLUMNS if key in own}
    row["params_sha256"] = result.get("params_sha256") if model is None else \
        result.get("model_params_sha256", [None] * (model + 1))[model]
    return row


def write_summary(sweep_dir: Path, plots: bool = False) -> list[Path]:
    """sweep.csv, sweep.md and sweep-results.json from the variants' results; with `plots`,
    also the charts in plots/ (`digitsjax plots SWEEPDIR`: loading matplotlib and drawing
    cost more than a sweep of small networks should spend again at every run). Each is
    written whole, through the folder's ledger: a file of the user's with one of their names
    refuses them all, before any is written."""
    folder = sweep_folder(sweep_dir)
    sweep, rows = summarize(folder.path)
    keys = list(sweep["grid"])
    columns = ["variant", *keys, *RESULT_COLUMNS, *([STOPPED_AT] if HALVING in sweep else []),
               *([f"final_{key}" for key in keys] + [COPIED_FROM] if POPULATION in sweep
                 else [])]
    texts = {SUMMARY_CSV: _csv_text(rows, columns),
             SUMMARY_MARKDOWN: _markdown_table(rows, keys) + _halving_line(sweep, rows)
             + _population_line(sweep),
             RESULTS_JSON: json.dumps({"grid": sweep["grid"], "points": rows,
                                       "best": (best_point(rows) or {}).get("variant")}
                                      | ({"lineage": lineage(sweep)} if POPULATION in sweep
                                         else {}), indent=2) + "\n"}
    for name in texts:
        folder.checked(name)
    charts = _plan_charts(folder, sweep, rows) if plots else []
    paths = [folder.write_text(name, text) for name, text in texts.items()]
    return paths + [draw(path) for draw, path in charts]


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows({c: _csv_value(row[c]) for c in columns} for row in rows)
    return buffer.getvalue()


def _plan_charts(folder: OwnedFolder, sweep: dict[str, Any],
                 rows: list[dict[str, Any]]) -> list[tuple[Callable[[Path], Path], Path]]:
    """The sweep's charts in plots/, each a drawing and its path (checked and listed, nothing
    drawn yet): accuracy by variant; against each numeric key (and a heat map of the first
    two); the learning curves of the best points."""
    from digitsjax.apps.plots import (
        figure_paths,
        plot_sweep,
        plot_sweep_curves,
        plot_sweep_heatmap,
        plot_sweep_key,
    )

    name = sweep["pipeline"]["name"]
    trained = _finished(rows)  # a diverged point is in the table, not on the charts
    keys = list(sweep["grid"])
    charts = {CHART: functools.partial(plot_sweep, [r for r in rows if r["parameters"] is not None],
                                       title=f"{name}: accuracy by {', '.join(keys)}")}
    if POPULATION in sweep:  # its members' values changed: charts of their schedules instead
        charts |= _population_charts(sweep, rows)
        keys = []
    numeric = [k for k in keys if all(isinstance(v, int | float) and not isinstance(v, bool)
                                      for v in sweep["grid"][k])]
    few = [k for k in numeric if len(set(sweep["grid"][k])) <= HEATMAP_VALUES]
    if trained:
        for key in numeric:
            charts[f"sweep-{key}.png"] = functools.partial(
                plot_sweep_key, trained, key, title=f"{name}: accuracy by {key}")
        if len(few) >= 2:
            charts["sweep-heatmap.png"] = functools.partial(
                plot_sweep_heatmap, trained, (few[0], few[1]), title=name)
        best = sorted(trained, key=lambda r: r["val_accuracy"], reverse=True)[:BEST_CURVES]
        entries = {v["name"]: v for v in sweep["variants"]}
        curves = {r["variant"]: _curve(folder.path, entries[r["variant"]]) for r in best}
        charts["sweep-curves.png"] = functools.partial(
            plot_sweep_curves, curves, title=f"{name}: the {len(curves)} best points")
    paths = figure_paths(folder, PLOTS_DIR, list(charts))
    return list(zip(charts.values(), paths, strict=True))


def _population_charts(sweep: dict[str, Any], rows: list[dict[str, Any]]
                       ) -> dict[str, Callable[[Path], Path]]:
    """A population's schedules (each member's values over the epochs) and its lineage."""
    from digitsjax.apps.plots import plot_population_lineage, plot_population_schedules

    name, epochs = sweep["pipeline"]["name"], sweep["pipeline"]["train"]["epochs"]
    keys = sorted(sweep[POPULATION][BOUNDS])
    schedules = {entry["name"]: _schedule(entry) for entry in sweep["variants"]}
    best = (best_point(rows) or {}).get("variant")
    return {"sweep-schedules.png": functools.partial(
                plot_population_schedules, schedules, keys, epochs, best,
                title=f"{name}: each member's values"),
            "sweep-lineage.png": functools.partial(
                plot_population_lineage, lineage(sweep), [e["name"] for e in sweep["variants"]],
                epochs, title=f"{name}: who took whose state")}


BEST_CURVES = 5
HEATMAP_VALUES = 12
"""A heat map's keys have at most this many values each (drawn keys have one per sample)."""


def _curve(sweep_dir: Path, entry: dict[str, Any]) -> list[tuple[int, float]]:
    """A point's validation accuracy per evaluated epoch (over its stages, if it has any)."""
    curve = []
    for where in entry.get("stages", [entry]):
        records = read_metrics(_workdir_of(sweep_dir, where))
        model = where.get("model")
        own = records if model is None else [model_record(r, model) for r in records]
        curve += [(r["epoch"], r["val_accuracy"]) for r in own if "val_accuracy" in r]
    return curve


def lineage(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every exploit step of a population, by epoch and member: who took whose state, and
    their values before and after."""
    return sorted((c for entry in sweep["variants"] for c in entry.get(COPIED, [])),
                  key=lambda c: (c["epoch"], c["member"]))


def _population_line(sweep: dict[str, Any]) -> str:
    """What population-based training did: when it exploited, and how many points copied."""
    if POPULATION not in sweep:
        return ""
    steps: dict[int, int] = {}
    for c in lineage(sweep):
        steps[c["epoch"]] = steps.get(c["epoch"], 0) + 1
    said = ", ".join(f"epoch {epoch}: {_count(n, 'copy')}" for epoch, n in steps.items())
    every = sweep[POPULATION][EVERY]
    return (f"\nPopulation-based training: the worst took the state of the best after every "
            f"{'epoch' if every == 1 else f'{every} epochs'} ({said or 'no exploit step yet'}); "
            "a row's values are its point's first and, after an arrow, last.\n")


def _halving_line(sweep: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """What successive halving did: its rungs, and how many points each stage trained."""
    if HALVING not in sweep:
        return ""
    rungs, keep = sweep[HALVING][RUNGS], sweep[HALVING][KEEP]
    counts = [len(rows)] + [sum(r[STOPPED_AT] is None or r[STOPPED_AT] > rung for r in rows)
                            for rung in rungs]
    return (f"\nSuccessive halving: ranked at epochs {', '.join(map(str, rungs))}, keeping "
            f"{keep:g} of the points each time: {' -> '.join(map(str, counts))} points.\n")


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list) else value


def _markdown_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    header = [*keys, "parameters", "epochs", "train acc", "val acc", "test acc", "test loss",
              "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_csv_value(row[k]) if row.get(f"final_{k}", row[k]) == row[k] else
                 f"{_csv_value(row[k])} → {_csv_value(row[f'final_{k}'])}" for k in keys]
        cells += [f"{row['parameters']:,}" if row["parameters"] else "",
                  row["epochs"] or "", _percent(row["train_accuracy"]),
                  _percent(row["val_accuracy"]), _percent(row["test_accuracy"]),
                  f"{row['test_loss']:.4f}" if row["test_loss"] is not None else "",
                  f"{row['train_seconds']:.1f}" if row["train_seconds"] is not None else ""]
        if _diverged(row):
            cells[len(keys) + 3] = f"diverged at step {row['diverged_at']}"
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    best = best_point(rows)
    if best is not None:
        lines += ["", f"Best by validation accuracy: {best['variant']} ("
                      f"{_percent(best['val_accuracy'])}, test {_percent(best['test_accuracy'])})."]
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return f"{100 * value:.2f}%" if value is not None else "(not trained)"
