"""metrics.jsonl after a crash: an append cut short is dropped, damage is named."""

from __future__ import annotations

import json

import pytest

from digitsjax.errors import CheckpointError
from digitsjax.run.records import METRICS, append_metrics, read_metrics, truncate_metrics

RECORDS = [{"epoch": 1, "step": 429, "val_accuracy": 0.9}, {"epoch": 2, "step": 858}]


def test_an_append_cut_short_is_dropped_and_the_next_resume_rewrites_the_file(tmp_path):
    for record in RECORDS:
        append_metrics(tmp_path, record)
    whole = (tmp_path / METRICS).read_text()
    torn = json.dumps({"epoch": 3, "step": 1287})[:17]  # killed, or the disk full, mid-write
    (tmp_path / METRICS).write_text(whole + torn)

    assert read_metrics(tmp_path) == RECORDS
    truncate_metrics(tmp_path, last_step=858)  # what a resumed run does first
    assert (tmp_path / METRICS).read_text() == whole
    append_metrics(tmp_path, {"epoch": 3, "step": 1287})
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("line", ["{oops", "[1, 2]", '{"epoch": 1}', '{"step": "429"}'])
def test_a_damaged_complete_line_is_an_error_naming_it(tmp_path, line):
    (tmp_path / METRICS).write_text(f"{json.dumps(RECORDS[0])}\n{line}\n")
    with pytest.raises(CheckpointError, match=rf"{METRICS} line 2 is not an epoch record; "
                                              "restore the file, delete the line"):
        read_metrics(tmp_path)


def test_no_file_is_no_records(tmp_path):
    assert read_metrics(tmp_path) == []


def test_a_line_written_under_the_old_field_names_reads_back_under_the_new(tmp_path):
    """Workdirs written when the per-model training fields were `model_train_*` still read."""
    old = {"epoch": 1, "step": 429, "train_loss": 0.2, "model_train_losses": [0.1, 0.3],
           "model_train_accuracies": [0.97, 0.83], "model_diverged_at": [-1, 7]}
    (tmp_path / METRICS).write_text(json.dumps(old) + "\n")
    assert list(read_metrics(tmp_path)[0].items()) == [
        ("epoch", 1), ("step", 429), ("train_loss", 0.2), ("train_model_losses", [0.1, 0.3]),
        ("train_model_accuracies", [0.97, 0.83]), ("model_diverged_at", [-1, 7])]
