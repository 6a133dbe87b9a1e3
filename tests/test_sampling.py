"""A sweep that samples: `[sweep]` keys given as ranges, `samples = N` points drawn together
from the pipeline's seed (a rotated Halton sequence), beside the keys given as lists."""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import numpy as np
import pytest

from digitsjax.apps.sweep import grid_from_table, make_variants, read_grid, run_sweep
from digitsjax.core.config import load_pipeline
from digitsjax.core.sampling import draw, halton
from digitsjax.errors import ConfigError
from digitsjax.run.loop import train_pipeline

from .conftest import REPO, TINY

MNIST_MLP = REPO / "pipelines" / "mnist_mlp.toml"
RANGES = {"optimizer.learning_rate": {"log_uniform": [1e-4, 1e-1]},
          "model.dropout": {"uniform": [0.0, 0.5]},
          "train.batch_size": {"integer": [64, 256]},
          "model.activation": {"choice": ["relu", "tanh", "sigmoid"]}}


def base(seed: int = 0):
    return dataclasses.replace(load_pipeline(MNIST_MLP), seed=seed)


def names(grid, seed: int = 0) -> list[str]:
    return [v.name for v in make_variants(base(seed), grid)]


def test_the_same_file_draws_the_same_points_and_another_seed_draws_others():
    grid = grid_from_table({**RANGES, "samples": 8}, "test")
    assert names(grid) == names(grid)
    assert len(set(names(grid))) == 8
    assert set(names(grid)).isdisjoint(names(grid, seed=1))


def test_every_value_is_drawn_from_its_range_with_its_type():
    drawn = draw(RANGES, 64, seed=0)
    rates, dropouts = drawn["optimizer.learning_rate"], drawn["model.dropout"]
    assert all(isinstance(r, float) and 1e-4 <= r <= 1e-1 for r in rates)
    assert all(isinstance(d, float) and 0.0 <= d <= 0.5 for d in dropouts)
    assert set(drawn["train.batch_size"]) <= set(range(64, 257))
    assert all(type(b) is int for b in drawn["train.batch_size"])
    assert set(drawn["model.activation"]) == {"relu", "tanh", "sigmoid"}
    decades = np.histogram(np.log10(rates), bins=[-4, -3, -2, -1])[0]
    assert max(decades) - min(decades) <= 1  # as many rates in each decade: log-uniform


def test_the_points_cover_a_range_evenly_and_a_longer_draw_begins_with_a_shorter_one():
    for seed in range(5):
        units = halton(16, 2, seed)
        eighths = np.histogram(units[:, 0], bins=8, range=(0, 1))[0]  # base 2: 16 points
        thirds = np.histogram(units[:9, 1], bins=3, range=(0, 1))[0]  # base 3: 9 points
        assert set(eighths) <= {1, 2, 3} and set(thirds) <= {2, 3, 4}
        np.testing.assert_array_equal(halton(8, 2, seed), units[:8])
    ranged = {"optimizer.learning_rate": RANGES["optimizer.learning_rate"]}
    assert draw(ranged, 4, 0)["optimizer.learning_rate"] == \
        draw(ranged, 12, 0)["optimizer.learning_rate"][:4]


def test_listed_keys_make_a_product_with_the_drawn_points_read_together():
    grid = grid_from_table({"seed": [0, 1], "samples": 3, "optimizer": {
        "learning_rate": {"log_uniform": [1e-4, 1e-1]}, "weight_decay": {"uniform": [0, 1e-3]}}},
        "test")
    variants = make_variants(base(), grid)
    assert len(variants) == 6
    pairs = [(v.pipeline.optimizer.learning_rate, v.pipeline.optimizer.weight_decay)
             for v in variants]
    assert pairs[:3] == pairs[3:] and len(set(pairs)) == 3  # the same 3 samples for each seed
    assert [v.pipeline.seed for v in variants] == [0, 0, 0, 1, 1, 1]
    assert variants[0].name == (f"seed=0,learning_rate={pairs[0][0]},"
                                f"weight_decay={pairs[0][1]}")


@pytest.mark.parametrize("table, problem", [
    ({"optimizer.learning_rate": {"log_uniform": [1e-4, 1e-1]}},
     "draws optimizer.learning_rate from a range but says not how many points"),
    ({"seed": [0, 1], "samples": 4}, "samples is given, but no key has a range"),
    ({"samples": 0, "model.dropout": {"uniform": [0, 0.5]}}, "samples must be a whole number"),
    ({"samples": 4, "optimizer.learning_rate": {"log_uniform": [0, 1]}},
     "must give [low, high], 0 < low < high"),
    ({"samples": 4, "model.dropout": {"uniform": [0.5, 0.1]}}, "must give [low, high], low < high"),
    ({"samples": 4, "train.batch_size": {"integer": [64.0, 128]}}, "whole numbers"),
    ({"samples": 4, "model.activation": {"choice": []}}, "a non-empty list of values"),
    ({"samples": 4, "model.dropout": {"normal": [0, 1]}},
     "no key has a range to draw from (a table of one of uniform, log_uniform, integer, choice)"),
], ids=["no samples", "no range", "zero samples", "log of zero", "reversed", "float integer",
        "empty choice", "unknown kind"])
def test_a_malformed_range_is_one_line_before_anything_trains(table, problem):
    with pytest.raises(ConfigError) as error:
        make_variants(base(), grid_from_table(table, "lr.toml"))
    assert problem in str(error.value) and "\n" not in str(error.value)


def test_a_range_that_draws_the_same_point_twice_says_to_draw_fewer():
    grid = grid_from_table({"samples": 5, "model.activation": {"choice": ["relu", "tanh"]}}, "t")
    with pytest.raises(ConfigError, match=re.escape("needs fewer samples, or lists")):
        make_variants(base(), grid)


@pytest.mark.slow
def test_drawn_points_train_together_each_at_its_single_runs_fingerprint(tmp_path, mnist_dir):
    tiny = load_pipeline(MNIST_MLP, [*TINY, "train.epochs=1"])
    grid = grid_from_table({"samples": 2, "optimizer.learning_rate": {
        "log_uniform": [1e-3, 1e-2]}}, "test")
    run_sweep(tiny, grid, tmp_path / "sweep", mnist_dir=str(mnist_dir), echo=lambda _: None)
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert {v.get("workdir") for v in record["variants"]} == {"program-1"}  # one program
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    rates = record["grid"]["optimizer.learning_rate"]
    assert [float(r["optimizer.learning_rate"]) for r in rows] == rates
    alone = train_pipeline(dataclasses.replace(tiny, optimizer=dataclasses.replace(
        tiny.optimizer, learning_rate=rates[1])), tmp_path / "alone",
        mnist_dir=str(mnist_dir), echo=lambda _: None)
    assert rows[1]["params_sha256"] == alone["params_sha256"]


def test_grid_options_give_ranges_and_samples_as_the_table_does():
    grid = read_grid(MNIST_MLP, ["optimizer.learning_rate={log_uniform=[1e-4,1e-1]}",
                                 "samples=4", "seed=[0,1]"])
    variants = make_variants(base(), grid)
    assert len(variants) == 8 and {v.pipeline.seed for v in variants} == {0, 1}
    no_count = re.escape("says not how many points; add e.g. samples = 16")
    with pytest.raises(ConfigError, match=no_count):
        read_grid(MNIST_MLP, ["optimizer.learning_rate={log_uniform=[1e-4,1e-1]}"])
    not_a_count = re.escape("samples must be a whole number >= 1, got 'many'")
    with pytest.raises(ConfigError, match=not_a_count):
        read_grid(MNIST_MLP, ["model.dropout={uniform=[0,0.5]}", "samples=many"])
