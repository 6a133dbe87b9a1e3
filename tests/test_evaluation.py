"""`digitsjax evaluate`: test loss and accuracy, accuracy per digit, confusion matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from digitsjax.apps.evaluate import confusion_matrix, evaluate_trained, per_class_accuracy
from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network

from .conftest import run_cli


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    matrix = confusion_matrix(labels, predicted)
    assert matrix.shape == (10, 10)
    assert matrix[0].tolist()[:3] == [1, 1, 0]
    assert matrix[2].tolist()[:3] == [1, 0, 2]
    assert matrix.sum() == len(labels)
    accuracy = per_class_accuracy(matrix)
    assert accuracy[:3].tolist() == [0.5, 1.0, pytest.approx(2 / 3)]
    assert np.isnan(accuracy[3:]).all()  # digits never seen have no accuracy, not 0%


def test_evaluation_agrees_with_the_training_log(trained_workdir, mnist):
    result = evaluate_trained(load_network(trained_workdir), mnist)
    matrix = np.array(result["confusion_matrix"])
    assert matrix.sum() == len(mnist.test_labels)
    assert matrix.sum(axis=1).tolist() == np.bincount(mnist.test_labels, minlength=10).tolist()
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["test_accuracy"])
    assert result["per_class_accuracy"] == pytest.approx(
        (np.diag(matrix) / matrix.sum(axis=1)).tolist())
    final = read_metrics(trained_workdir)[-1]
    assert result["step"] == final["step"]
    assert result["test_accuracy"] == pytest.approx(final["test_accuracy"])
    assert result["test_loss"] == pytest.approx(final["test_loss"], rel=1e-5)


def test_cli_evaluates_a_chosen_checkpoint_as_json_and_as_a_table(trained_workdir):
    first_epoch = read_metrics(trained_workdir)[0]
    result = run_cli("evaluate", str(trained_workdir), "--checkpoint", str(first_epoch["step"]),
                     "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["step"] == first_epoch["step"]
    assert answer["test_accuracy"] == pytest.approx(first_epoch["test_accuracy"])
    assert len(answer["per_class_accuracy"]) == 10
    assert np.array(answer["confusion_matrix"]).shape == (10, 10)

    table = run_cli("evaluate", str(trained_workdir), "--checkpoint", "best")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("step ") and "test_accuracy" in lines[0]
    assert lines[1].startswith("accuracy per digit:") and lines[1].count("%") == 10
    assert "rows: true digit" in lines[2]
    matrix = [[int(n) for n in line.split()[1:]] for line in lines[4:14]]
    assert np.array(matrix).sum() == 10_000


def test_cli_refuses_a_checkpoint_that_does_not_exist(trained_workdir):
    result = run_cli("evaluate", str(trained_workdir), "--checkpoint", "7")
    assert result.returncode == 2
    assert "checkpoint '7' is not latest, best or one of the saved steps" in result.stderr
    assert "Traceback" not in result.stderr
