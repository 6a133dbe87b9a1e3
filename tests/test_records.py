"""A K-model run's epoch record holds each model's own metrics; model k's part of it reads as
the record of the single run that model equals."""

from __future__ import annotations

from digitsjax.run.records import (
    MODEL_DIVERGED_AT,
    TRAIN_MODEL_ACCURACIES,
    TRAIN_MODEL_LOSSES,
    RecordWriter,
    format_duration,
    format_record,
    model_record,
)

PROGRAM_RECORD = {
    "epoch": 3, "step": 1290, "train_loss": 0.2, "train_accuracy": 0.9,
    "val_loss": 9.0, "val_accuracy": 0.09, "test_loss": 9.1, "test_accuracy": 0.1,  # ensemble
    "train_model_losses": [0.1, 0.3], "train_model_accuracies": [0.97, 0.83],
    "val_model_losses": [0.12, 0.5], "val_model_accuracies": [0.96, 0.85],
    "test_model_losses": [0.11, 0.52], "test_model_accuracies": [0.965, 0.84],
    "model_diverged_at": [-1, -1], "epoch_seconds": 1.5, "examples_per_second": 2000.0,
}


def test_a_models_record_is_its_own_metrics_under_a_single_runs_names():
    assert model_record(PROGRAM_RECORD, 1) == {
        "epoch": 3, "step": 1290, "train_loss": 0.3, "train_accuracy": 0.83,
        "val_loss": 0.5, "val_accuracy": 0.85, "test_loss": 0.52, "test_accuracy": 0.84,
        "diverged_at": -1}


def test_a_model_of_k_seeds_has_the_evaluations_only():
    """Seeds trained with one set of numbers record per-model evaluations, not training."""
    seeds = {key: value for key, value in PROGRAM_RECORD.items()
             if key not in (TRAIN_MODEL_LOSSES, TRAIN_MODEL_ACCURACIES, MODEL_DIVERGED_AT)}
    assert model_record(seeds, 0) == {
        "epoch": 3, "step": 1290, "val_loss": 0.12, "val_accuracy": 0.96,
        "test_loss": 0.11, "test_accuracy": 0.965}


def test_a_sweep_programs_console_line_gives_its_points_range_on_each_split():
    assert format_record(PROGRAM_RECORD, epochs=5) == (
        "epoch   3/5  step   1290 | 2 points | train 83.00-97.00% | val 85.00-96.00% | "
        "test 84.00-96.50% | 1.50 s  2,000 ex/s")


def epoch_lines(epochs: int, first: int, moments: list[float], tmp_path,
                after: float = 0.0) -> list[str]:
    """The console lines of epochs `first`.. of a run, logged at `moments` (a clock's reads)."""
    lines: list[str] = []
    clock = iter(moments)
    writer = RecordWriter(tmp_path, 0, epochs, primary=False, log=lines.append, after=after,
                          clock=lambda: next(clock))
    for epoch in range(first, first + len(moments)):
        writer.log({**PROGRAM_RECORD, "epoch": epoch})
    return lines


def test_from_its_second_epoch_a_run_says_the_time_left_from_the_epochs_it_timed(tmp_path):
    # the first epoch compiles: the estimate starts from the time between two epoch lines
    first, second, third, last = epoch_lines(5, 1, [100.0, 130.0, 150.0, 175.0], tmp_path)
    assert first.endswith("ex/s")
    assert second.endswith("ex/s | 1 min 30 s left")  # 3 epochs of 30 s
    assert third.endswith("ex/s | 50 s left")  # 2 epochs of 25 s, the mean of 30 and 20
    assert third.startswith("epoch   3/5")
    assert last.endswith("ex/s | 25 s left")


def test_a_resumed_run_times_its_own_epochs_and_the_last_line_says_nothing_left(tmp_path):
    resumed = epoch_lines(5, 4, [500.0, 510.0], tmp_path)
    assert [line.rsplit("|", 1)[-1] for line in resumed] == [" 1.50 s  2,000 ex/s"] * 2


def test_a_sweeps_program_says_its_own_time_left_and_the_sweeps(tmp_path):
    # 2 epochs of 10 s left here; later programs hold 6 of this program's epochs of work
    _, line = epoch_lines(4, 1, [0.0, 10.0], tmp_path, after=6)
    assert line.endswith("ex/s | 20 s left, sweep 1 min 20 s")
    *_, last = epoch_lines(2, 1, [0.0, 10.0], tmp_path, after=6)  # its own last epoch
    assert last.endswith("ex/s | sweep 1 min 00 s left")


def test_a_duration_is_as_precise_as_a_guess_from_a_few_epochs_can_be():
    assert [format_duration(s) for s in (0.4, 44.6, 60, 200, 3599.4, 3725, 36000)] == \
        ["0 s", "45 s", "1 min 00 s", "3 min 20 s", "59 min 59 s", "1 h 02 min", "10 h 00 min"]
