"""Sweeps: one pipeline trained once per point of a grid, each point into its own workdir.

The grid comes from `--grid KEY=[v1, v2, ...]` options (TOML values) and the pipeline's
`[sweep]` table, each key from one of them; several keys make their cartesian product. A
variant is the base pipeline with those keys set; `run.train_pipeline` trains (or resumes) it
into `SWEEPDIR/<variant>`. The summary is read back from the variants' own workdirs, so
re-running an interrupted sweep resumes the unfinished variants and rewrites the same table.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitsjax.apps.plots import PLOTS_DIR, plot_sweep
from digitsjax.core.config import (
    SWEEP_TABLE,
    Pipeline,
    parse_value,
    pipeline_from_dict,
    pipeline_to_dict,
    read_pipeline_file,
    set_key,
)
from digitsjax.core.model import parameter_count
from digitsjax.errors import ConfigError, UserError
from digitsjax.files import write_json_atomic, write_text_atomic
from digitsjax.run.loop import train_pipeline
from digitsjax.run.records import last_evaluated, read_metrics
from digitsjax.run.workdir import MANIFEST, recorded_pipeline

SWEEP_JSON = "sweep.json"
SUMMARY_CSV = "sweep.csv"
SUMMARY_MARKDOWN = "sweep.md"
CHART = "sweep.png"
RESULT_COLUMNS = ("parameters", "epochs", "train_loss", "train_accuracy", "val_accuracy",
                  "test_loss", "test_accuracy", "train_seconds")

Grid = dict[str, list[Any]]


@dataclass(frozen=True)
class Variant:
    name: str
    """Its folder in the sweep directory, e.g. `hidden=128-64`."""
    values: dict[str, Any]
    pipeline: Pipeline


def parse_grid_option(text: str) -> tuple[str, list[Any]]:
    """`model.hidden=[[15], [30]]` -> ("model.hidden", [[15], [30]])."""
    key, sep, value = text.partition("=")
    values = parse_value(value) if sep else None
    if not key.strip() or not isinstance(values, list) or not values:
        raise ConfigError(f"--grid {text!r} must look like section.key=[value, ...], "
                          "e.g. --grid model.hidden=[[30],[100]]")
    return key.strip(), values


def read_grid(pipeline_path: Path, options: Iterable[str]) -> Grid:
    """The pipeline file's `[sweep]` table, plus the keys of the `--grid` options.

    A key may be given once: were a second list to replace the first, or add to it, one of
    them would be silently ignored or the grid would not be the one the user read.
    """
    grid = _read_table(Path(pipeline_path))
    from_table = set(grid)
    for option in options:
        key, values = parse_grid_option(option)
        if key in from_table:
            raise ConfigError(f"--grid {key!r} is also in the [{SWEEP_TABLE}] table of "
                              f"{pipeline_path}", "give its values in one place: edit the "
                              "table, or remove the key from it and list them all in one --grid")
        if key in grid:
            raise ConfigError(f"--grid {key!r} is given twice", "list all its values in one "
                              f"--grid, e.g. --grid {key}={_compact([*grid[key], *values])}")
        grid[key] = values
    if not grid:
        raise ConfigError(f"{pipeline_path} has no [{SWEEP_TABLE}] table; pass the grid, e.g. "
                          "--grid model.hidden=[[30],[100]]")
    return grid


def _read_table(pipeline_path: Path) -> Grid:
    """The `[sweep]` table of a pipeline file as a grid ({} without one)."""
    table = read_pipeline_file(pipeline_path).get(SWEEP_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{pipeline_path}: [{SWEEP_TABLE}] must be a table of "
                          "key = [values] lines")
    grid = dict(_flatten(table))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{pipeline_path}: [{SWEEP_TABLE}] {key} must be a non-empty "
                              f"list of values, e.g. {key} = [[30], [100]]")
    return grid


def _compact(values: list[Any]) -> str:
    """`values` as one shell word of TOML: `[0,1,2]`, `[[30],[100]]`."""
    return json.dumps(values, separators=(",", ":"), default=str)


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """TOML's `model.hidden = [...]` inside [sweep] is a nested table: flatten it to keys."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def make_variants(base: Pipeline, grid: Grid) -> list[Variant]:
    """Every point of the grid as a validated pipeline, before anything is trained."""
    variants = []
    for point in itertools.product(*grid.values()):
        values = dict(zip(grid, point, strict=True))
        name = ",".join(f"{key.rsplit('.', 1)[-1]}={_label(v)}" for key, v in values.items())
        raw = pipeline_to_dict(base)
        for key, value in values.items():
            set_key(raw, key, value, option="--grid")
        raw["name"] = f"{base.name}/{name}"
        pipeline = pipeline_from_dict(raw, source=f"sweep variant {name}")
        variants.append(Variant(name=name, values=values, pipeline=pipeline))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"the grid gives two variants the same name ({', '.join(names)}); "
                          "list each value once")
    return variants


def _label(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(_label(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def run_sweep(base: Pipeline, grid: Grid, sweep_dir: Path, *, mnist_dir: str | None = None,
              restart: bool = False, progress: bool = False,
              echo: Callable[[str], None] = print) -> list[Path]:
    """Train every variant into `sweep_dir/<variant>`; write and return the summary files."""
    variants = make_variants(base, grid)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep_dir / SWEEP_JSON, {
        "pipeline": pipeline_to_dict(base), "grid": grid,
        "variants": [{"name": v.name, "values": v.values} for v in variants]})
    for i, variant in enumerate(variants, 1):
        echo(f"sweep {i}/{len(variants)}: {variant.name}")
        train_pipeline(variant.pipeline, sweep_dir / variant.name, mnist_dir=mnist_dir,
                       restart=restart, progress=progress, echo=echo)
    return write_summary(sweep_dir)


def is_sweep(directory: Path) -> bool:
    return (Path(directory) / SWEEP_JSON).is_file()


def summarize(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sweep's description and one row per variant, read from the variants' workdirs."""
    try:
        sweep = json.loads((Path(sweep_dir) / SWEEP_JSON).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{sweep_dir} is not a readable sweep ({e}); "
                        "run `digitsjax sweep` into it") from None
    rows = []
    for variant in sweep["variants"]:
        workdir = Path(sweep_dir) / variant["name"]
        row = {"variant": variant["name"], **variant["values"], **dict.fromkeys(RESULT_COLUMNS)}
        if (workdir / MANIFEST).is_file():
            row["parameters"] = parameter_count(recorded_pipeline(workdir).model)
        records = read_metrics(workdir)
        final = last_evaluated(records)
        if final is not None:  # a variant not trained yet keeps its empty cells
            row |= {key: final[key] for key in RESULT_COLUMNS if key in final}
            row["epochs"] = final["epoch"]
            row["train_seconds"] = sum(r["epoch_seconds"] for r in records)
        rows.append(row)
    return sweep, rows


def write_summary(sweep_dir: Path) -> list[Path]:
    """sweep.csv, sweep.md and plots/sweep.png from the variants' results."""
    sweep, rows = summarize(sweep_dir)
    keys = list(sweep["grid"])
    columns = ["variant", *keys, *RESULT_COLUMNS]
    csv_path = Path(sweep_dir) / SUMMARY_CSV
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: _csv_value(row[c]) for c in columns} for row in rows)
    markdown_path = Path(sweep_dir) / SUMMARY_MARKDOWN
    write_text_atomic(markdown_path, _markdown_table(rows, keys))
    (Path(sweep_dir) / PLOTS_DIR).mkdir(exist_ok=True)
    chart = plot_sweep([r for r in rows if r["parameters"] is not None],
                       Path(sweep_dir) / PLOTS_DIR / CHART,
                       title=f"{sweep['pipeline']['name']}: accuracy by {', '.join(keys)}")
    return [csv_path, markdown_path, chart]


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list) else value


def _markdown_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    header = [*keys, "parameters", "epochs", "train acc", "val acc", "test acc", "test loss",
              "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_csv_value(row[k]) for k in keys]
        cells += [f"{row['parameters']:,}" if row["parameters"] else "",
                  row["epochs"] or "", _percent(row["train_accuracy"]),
                  _percent(row["val_accuracy"]), _percent(row["test_accuracy"]),
                  f"{row['test_loss']:.4f}" if row["test_loss"] is not None else "",
                  f"{row['train_seconds']:.1f}" if row["train_seconds"] is not None else ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return f"{100 * value:.2f}%" if value is not None else "(not trained)"
