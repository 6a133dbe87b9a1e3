"""A K-model run's epoch record holds each model's own metrics; model k's part of it reads as
the record of the single run that model equals."""

from __future__ import annotations

from digitsjax.run.records import (
    MODEL_DIVERGED_AT,
    TRAIN_MODEL_ACCURACIES,
    TRAIN_MODEL_LOSSES,
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
