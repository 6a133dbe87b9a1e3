"""The epoch record: one typed definition of what a run logs per epoch, and `metrics.jsonl`.

`metrics.jsonl` holds one JSON object per finished epoch, oldest first; TensorBoard's event
files, the console line, `plots`, `verify` and `sweep` all read the same `EpochRecord`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from digitsjax.errors import RESTART, CheckpointError
from digitsjax.files import OwnedFolder
from digitsjax.run.tensorboard import ScalarWriter

METRICS = "metrics.jsonl"
SPLITS = ("train", "val", "test")
TIMING_FIELDS = ("epoch_seconds", "examples_per_second", "wall_seconds")
"""Fields that measure the machine, not the run: they differ between replays."""

# A K-model record's per-model fields, each model's own values: `<split>_model_<metric>`, and
# a sweep's program's `model_diverged_at`.
TRAIN_MODEL_LOSSES = "train_model_losses"
TRAIN_MODEL_ACCURACIES = "train_model_accuracies"
VAL_MODEL_LOSSES = "val_model_losses"
VAL_MODEL_ACCURACIES = "val_model_accuracies"
VAL_MODEL_ACCURACY_SD = "val_model_accuracy_sd"
TEST_MODEL_LOSSES = "test_model_losses"
TEST_MODEL_ACCURACIES = "test_model_accuracies"
TEST_MODEL_ACCURACY_SD = "test_model_accuracy_sd"
MODEL_DIVERGED_AT = "model_diverged_at"
MODEL_ACCURACIES = {"train": TRAIN_MODEL_ACCURACIES, "val": VAL_MODEL_ACCURACIES,
                    "test": TEST_MODEL_ACCURACIES}
"""Each split's per-model accuracies field."""
MODEL_ACCURACY_SD = {"val": VAL_MODEL_ACCURACY_SD, "test": TEST_MODEL_ACCURACY_SD}
"""Each evaluated split's field for the models' seed-to-seed standard deviation."""
RENAMED_FIELDS = {"model_train_losses": TRAIN_MODEL_LOSSES,
                  "model_train_accuracies": TRAIN_MODEL_ACCURACIES}
"""Field names in the other word order (`model_train_*`) that a workdir's metrics.jsonl may
hold, and the names `read_metrics` reads them under."""


class EpochRecord(TypedDict):
    """One line of metrics.jsonl. With K models, losses are the models' mean and accuracies the
    ensemble's; the `*_model_*` fields then hold each model's and their standard deviation."""

    epoch: int
    step: int
    """Steps done at the end of the epoch."""
    train_loss: float
    """Mean over the epoch's steps of the batch-mean loss (dropout on, while training)."""
    train_accuracy: float
    val_loss: NotRequired[float]
    """The validation and test fields are present in epochs that evaluate (every
    `train.eval_every_epochs`, and the last)."""
    val_accuracy: NotRequired[float]
    test_loss: NotRequired[float]
    test_accuracy: NotRequired[float]
    val_model_losses: NotRequired[list[float]]
    val_model_accuracies: NotRequired[list[float]]
    val_model_accuracy_sd: NotRequired[float]
    test_model_losses: NotRequired[list[float]]
    test_model_accuracies: NotRequired[list[float]]
    test_model_accuracy_sd: NotRequired[float]
    train_model_losses: NotRequired[list[float]]
    """A sweep's program: each model's own training loss and accuracy, and the 1-based step
    at which its loss or parameters turned NaN/inf (-1 while it trains)."""
    train_model_accuracies: NotRequired[list[float]]
    model_diverged_at: NotRequired[list[int]]
    epoch_seconds: float
    """Device time of the epoch's steps, compilation excluded."""
    examples_per_second: float
    """Training examples per second, summed over the K models."""
    wall_seconds: float
    """Since the run's process started training."""


MODEL_FIELDS = {"train_loss": TRAIN_MODEL_LOSSES, "train_accuracy": TRAIN_MODEL_ACCURACIES,
                "val_loss": VAL_MODEL_LOSSES, "val_accuracy": VAL_MODEL_ACCURACIES,
                "test_loss": TEST_MODEL_LOSSES, "test_accuracy": TEST_MODEL_ACCURACIES,
                "diverged_at": MODEL_DIVERGED_AT}
"""A K-model record's per-model lists, by the field of one model's own record they fill."""


def model_record(record: EpochRecord, k: int) -> dict[str, Any]:
    """Model k's part of a K-model run's record, under the names of its single run's record
    (a sweep's point: its own curves and results, not its program's ensemble)."""
    own = {field: record[many][k] for field, many in MODEL_FIELDS.items()
           if many in record}
    return {"epoch": record["epoch"], "step": record["step"], **own}


def without_timings(record: EpochRecord) -> dict[str, Any]:
    """What a replay must reproduce exactly: the record less its `TIMING_FIELDS`."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def last_evaluated(records: list[EpochRecord]) -> EpochRecord | None:
    """The newest record with test metrics: the run's result so far."""
    return next((r for r in reversed(records) if "test_accuracy" in r), None)


def best_evaluated(records: list[EpochRecord]) -> EpochRecord | None:
    """The record with the best validation accuracy (the later of equals, as checkpoints keep)."""
    scored = [r for r in records if "val_accuracy" in r]
    return max(scored, key=lambda r: (r["val_accuracy"], r["step"])) if scored else None


def format_best(best: EpochRecord, last: EpochRecord, kept: bool) -> str:
    """`best by validation: epoch 11 (98.08%), test 97.96% (last epoch 15: 97.98%, test ...)`."""
    line = (f"best by validation: epoch {best['epoch']} ({100 * best['val_accuracy']:.2f}%), "
            f"test {100 * best['test_accuracy']:.2f}%; last: epoch {last['epoch']} "
            f"({100 * last['val_accuracy']:.2f}%), test {100 * last['test_accuracy']:.2f}%")
    return line + ("; its checkpoint is kept as 'best'" if kept and best is not last else "")


def read_metrics(workdir: Path) -> list[EpochRecord]:
    """The epoch records, oldest first.

    A last line without its newline is an append that a crash or a full disk cut short; its
    epoch has no checkpoint yet (the record is written first), so it is dropped, and the
    resumed run writes it again. Any other unreadable line is damage, reported as such.
    Fields under a `RENAMED_FIELDS` name are read under their current one.
    """
    path = Path(workdir) / METRICS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e})",
                              f"restore it or retrain with {RESTART}") from None
    complete, _, _torn = text.rpartition("\n")
    records = []
    for number, line in enumerate(complete.splitlines(), 1):
        if not line.strip():
            continue
        record = _parse_record(line)
        if record is None:
            raise CheckpointError(f"{path} line {number} is not an epoch record",
                                  f"restore the file, delete the line, or retrain with {RESTART}")
        records.append(record)
    return records


def _parse_record(line: str) -> EpochRecord | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return {RENAMED_FIELDS.get(key, key): value for key, value in record.items()}


def append_metrics(workdir: Path, record: EpochRecord) -> None:
    """One more line in the workdir's metrics.jsonl (listed in its ledger, no link followed)."""
    OwnedFolder(Path(workdir)).append(METRICS, json.dumps(record) + "\n")


def truncate_metrics(workdir: Path, last_step: int) -> None:
    """Drop records written after `last_step`: a resumed run re-creates them identically."""
    kept = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    OwnedFolder(Path(workdir)).write_text(METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def format_record(record: EpochRecord, epochs: int) -> str:
    """One line per epoch: `loss accuracy` for train, validation and test, then speed."""
    parts = [f"epoch {record['epoch']:>3}/{epochs}  step {record['step']:>6}"]
    if MODEL_DIVERGED_AT in record:  # a sweep's program: its models are grid points
        return " | ".join([*parts, *format_points(record), format_speed(record)])
    for name in SPLITS:
        if f"{name}_accuracy" in record:
            parts.append(f"{name} {record[f'{name}_loss']:.4f} "
                         f"{100 * record[f'{name}_accuracy']:.2f}%")
        if MODEL_ACCURACIES[name] in record:
            parts.append(format_spread(record, name))
    parts.append(format_speed(record))
    return " | ".join(parts)


def format_speed(record: EpochRecord) -> str:
    return f"{record['epoch_seconds']:.2f} s  {record['examples_per_second']:,.0f} ex/s"


def format_points(record: EpochRecord) -> list[str]:
    """A sweep program's epoch: the range of its points' accuracies, and any stopped."""
    parts = []
    for split, field in MODEL_ACCURACIES.items():
        if field in record:
            values = record[field]  # type: ignore[literal-required]
            parts.append(f"{split} {100 * min(values):.2f}-{100 * max(values):.2f}%")
    stopped = sum(step >= 0 for step in record[MODEL_DIVERGED_AT])
    points = len(record[MODEL_DIVERGED_AT])
    return [f"{points} points", *parts] + ([f"{stopped} diverged"] if stopped else [])


def format_spread(record: dict[str, Any], split: str) -> str:
    """How K models compare: `(ensemble; models 97.71-97.93%, sd 0.08%)`."""
    accuracies = record[MODEL_ACCURACIES[split]]
    return (f"(ensemble; models {100 * min(accuracies):.2f}-{100 * max(accuracies):.2f}%, "
            f"sd {100 * record[MODEL_ACCURACY_SD[split]]:.2f}%)")


def time_left(moments: list[float], epoch: int, epochs: int, after: float = 0.0) -> str | None:
    """What is left of a run after `epoch`, from the moments this process logged its epochs:
    the wall time between two epoch lines holds the evaluations and checkpoints too, and the
    first line's own epoch, which compiles, is left out. `after`: the work of a sweep's later
    programs, in this run's epochs, for the sweep's own time left. None before a second line,
    or when nothing is left."""
    if len(moments) < 2 or epoch >= epochs + after:
        return None
    per_epoch = (moments[-1] - moments[0]) / (len(moments) - 1)
    own, sweep = (format_duration(per_epoch * n) for n in (epochs - epoch, epochs - epoch + after))
    if after == 0:
        return f"{own} left"
    return f"sweep {sweep} left" if epoch >= epochs else f"{own} left, sweep {sweep}"


def format_duration(seconds: float) -> str:
    """`45 s`, `3 min 20 s`, `1 h 05 min`: as precise as a guess from a few epochs can be."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class RecordWriter:
    """Where each finished epoch's record goes: metrics.jsonl and TensorBoard (process 0 only),
    and one console line (`log`), which from the second epoch of this process on says the time
    left (`time_left`, by `clock`; `after`: a sweep's later programs, in this run's epochs;
    `stop_epoch`: where this run ends, if before `epochs`)."""

    def __init__(self, workdir: Path, start_step: int, epochs: int, primary: bool,
                 log: Callable[[str], None], after: float = 0.0, stop_epoch: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._workdir, self._epochs, self._primary, self._log = workdir, epochs, primary, log
        self._after, self._clock, self._stop = after, clock, stop_epoch or epochs
        self._moments: list[float] = []  # when this process logged each epoch
        self._scalars = ScalarWriter(  # creates its file on the first write
            workdir, start_step, missing=lambda error: log(
                "notice: no TensorBoard event files for this run: tensorboardX is missing "
                f"({error}); {METRICS} holds the same records; install it with "
                "pip install tensorboardX"))
        if primary:
            truncate_metrics(workdir, start_step)

    def write(self, record: EpochRecord) -> None:
        if self._primary:
            append_metrics(self._workdir, record)
            self._scalars.write(record)

    def log(self, record: EpochRecord) -> None:
        self._moments.append(self._clock())
        left = time_left(self._moments, record["epoch"], self._stop, self._after)
        line = format_record(record, self._epochs)
        self._log(line if left is None else f"{line} | {left}")

    def close(self) -> None:
        self._scalars.close()
