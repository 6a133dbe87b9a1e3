"""Every run at a glance (`digitsjax runs`) and runs side by side (`digitsjax compare`).

Both read only what a run writes as it goes (its manifest, metrics.jsonl and lock), never a
checkpoint: listing a hundred runs starts no JAX and touches no device. A run whose files
digitsjax would not have written so is a `CheckpointError` naming the file: `compare` stops at
it, `runs` lists the others and returns it with the rest that it could not list.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitsjax.apps.plots import figure_paths, plot_comparison
from digitsjax.errors import RESTART, CheckpointError, FileError
from digitsjax.files import check_new_file, make_folders_of
from digitsjax.run.lock import holder_of
from digitsjax.run.records import (
    METRICS,
    MODEL_DIVERGED_AT,
    TEST_MODEL_ACCURACIES,
    VAL_MODEL_ACCURACIES,
    EpochRecord,
    best_evaluated,
    last_evaluated,
    read_metrics,
)
from digitsjax.run.workdir import MANIFEST, PER_MODEL, PLOTS_DIR, Workdir


@dataclass(frozen=True)
class RunSummary:
    """One workdir's state and results, as its files say (None where it has none yet)."""

    workdir: Path
    state: str
    """finished, interrupted, or running (with who runs it)."""
    epochs_done: int
    epochs: int
    best_val_accuracy: float | None
    """For K seeds, their ensemble's; for a sweep's program, its best model's."""
    best_epoch: int | None
    best_model: int | None
    """The sweep program's model that reached it; None for a run of one pipeline."""
    test_accuracy: float | None
    """The last test: the ensemble's, or the best model's."""
    params_sha256: str | None
    age_seconds: float
    """Since the run last wrote a record (or its manifest)."""


def find_workdirs(root: Path) -> list[Path]:
    """`root` itself if it is a workdir (it holds a manifest), else the workdirs directly
    inside it, by name."""
    root = Path(root)
    if (root / MANIFEST).is_file():
        return [root]
    try:
        return sorted(p for p in root.iterdir() if _holds_manifest(p))
    except OSError as e:
        raise CheckpointError(f"{root} is not a folder that can be listed ({e.strerror})",
                              "give the folder that holds the runs, e.g. checkpoints") from None


def _holds_manifest(folder: Path) -> bool:
    try:
        return (folder / MANIFEST).is_file()
    except OSError:  # a folder that cannot be looked into: listed as such, not skipped
        return True


def list_runs(root: Path) -> tuple[list[RunSummary], dict[Path, CheckpointError]]:
    """Every run under `root` (`find_workdirs`) summarized, and for each run that could not
    be, the error that says why: one damaged run hides none of the others."""
    summaries, unreadable = [], {}
    for path in find_workdirs(root):
        try:
            summaries.append(summarize(Workdir.open(path)))
        except CheckpointError as e:
            unreadable[path] = e
    return summaries, unreadable


def summarize(run: Workdir) -> RunSummary:
    """A run's state and results; a CheckpointError if its records are not a run's."""
    workdir, manifest, records = run.path, run.manifest, read_metrics(run.path)
    total = run.epochs[1]  # a whole number: Workdir.open checks it (and a stage's, its stop)
    holder = holder_of(workdir)
    try:  # records past read_metrics' own check (a step in each) are used as written
        done = records[-1]["epoch"] if records else 0
        state = (f"running ({holder})" if holder else "finished" if done >= total
                 else "interrupted")
        best = _best_model(records) if manifest.get(PER_MODEL) else _best_epoch(records)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise CheckpointError(f"{workdir / METRICS} holds records that digitsjax does not "
                              f"write ({type(e).__name__}: {e})",
                              f"restore it or retrain with {RESTART}") from None
    newest = max(p.stat().st_mtime for p in (workdir / MANIFEST, workdir / METRICS)
                 if p.exists())
    return RunSummary(workdir, state, done, total, *best,
                      params_sha256=run.result.get("params_sha256"),
                      age_seconds=time.time() - newest)


Best = tuple[float | None, int | None, int | None, float | None]
"""Best validation accuracy, its epoch and model, and the test accuracy."""
NO_RESULT: Best = (None, None, None, None)


def _best_epoch(records: list[EpochRecord]) -> Best:
    """A run's best validation accuracy (for K seeds, their ensemble's) and its last test."""
    best, last = best_evaluated(records), last_evaluated(records)
    return (best["val_accuracy"] if best else None, best["epoch"] if best else None, None,
            last["test_accuracy"] if last else None)


def _best_model(records: list[EpochRecord]) -> Best:
    """A sweep program's best model by validation (an ensemble of models trained with
    different numbers is nobody's network), never one that diverged, and its last test."""
    last = last_evaluated(records)
    if last is None:
        return NO_RESULT
    training = [k for k, step in enumerate(records[-1][MODEL_DIVERGED_AT]) if step < 0]
    scored = [(r[VAL_MODEL_ACCURACIES][k], r["step"], k, r["epoch"])
              for r in records if VAL_MODEL_ACCURACIES in r for k in training]
    if not scored:
        return NO_RESULT
    accuracy, _, k, epoch = max(scored)
    return accuracy, epoch, k, last[TEST_MODEL_ACCURACIES][k]


def _cells(s: RunSummary) -> tuple[str, str, str, str]:
    """Epochs, best validation, test and fingerprint as the tables show them."""
    where = f"model {s.best_model}, epoch {s.best_epoch}" if s.best_model is not None else \
        f"epoch {s.best_epoch}"
    return (f"{s.epochs_done}/{s.epochs}",
            "-" if s.best_val_accuracy is None else f"{_percent(s.best_val_accuracy)} ({where})",
            "-" if s.test_accuracy is None else _percent(s.test_accuracy),
            (s.params_sha256 or "-")[:12])


def _percent(accuracy: float) -> str:
    return f"{100 * accuracy:.2f}%"


def runs_table(summaries: Sequence[RunSummary]) -> str:
    """A fixed-width table, one line per run."""
    header = ("run", "state", "epochs", "best validation", "test", "params_sha256", "age")
    rows = [(s.workdir.name, s.state, *_cells(s), _age(s.age_seconds)) for s in summaries]
    return _table(header, rows)


def compare(workdirs: Sequence[Workdir], plot_path: Path | None = None) -> tuple[str, Path]:
    """The pipeline keys that differ, the results side by side, and the curves in one plot:
    FIRST_WORKDIR/plots/compare.png (listed in its ledger), or `plot_path`, a new PNG file.
    A place the plot cannot go is refused before any run is read."""
    _check_plot_path(workdirs[0], plot_path)
    flat = [_flatten(w.manifest["pipeline"]) for w in workdirs]
    keys = sorted({key for f in flat for key in f if len({repr(g.get(key)) for g in flat}) > 1})
    summaries = [summarize(w) for w in workdirs]
    rows = [(key, *(_show(f.get(key)) for f in flat)) for key in keys if key != "name"]
    cells = [_cells(s) for s in summaries]
    rows += [(label, *column) for label, column in zip(
        ("epochs", "best validation", "test", "params_sha256"), zip(*cells, strict=True),
        strict=True)]
    names = [w.path.name for w in workdirs]
    records = {name: read_metrics(w.path) for name, w in zip(names, workdirs, strict=True)}
    target = (figure_paths(workdirs[0].files, PLOTS_DIR, [COMPARE_PLOT])[0] if plot_path is None
              else make_folders_of(plot_path))
    return _table(("", *names), rows), plot_comparison(records, target)


COMPARE_PLOT = "compare.png"


def _check_plot_path(first: Workdir, plot_path: Path | None) -> None:
    """Refuse where the comparison cannot be drawn: a name that is no .png, anything already at
    a path the user named (`files.check_new_file`), a file of the user's in the first
    workdir's plots/."""
    if plot_path is None:
        first.files.checked(f"{PLOTS_DIR}/{COMPARE_PLOT}")
        return
    if Path(plot_path).suffix.lower() != ".png":
        raise FileError(f"{plot_path} does not end in .png",
                        "the plot is a PNG: give a path such as compare.png")
    check_new_file(plot_path)


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows,
                                                                        strict=True)]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in
                               zip(line, widths, strict=True)).rstrip()
                     for line in (header, *rows))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
