"""Grid points of one program train together: each model of the vmapped program, with its own
hyperparameters, trains what its own single run trains; a diverging model stops alone."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from digitsjax.core.config import Pipeline, load_pipeline
from digitsjax.core.program import (
    init_state,
    make_train_chunk,
    program_key,
    program_of,
    sweep_program,
)
from digitsjax.core.train import model_params

from .conftest import REPO, TINY, assert_single_run_bits

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"


def point(*overrides: str) -> Pipeline:
    return load_pipeline(PIPELINE, [*TINY, *overrides])


def data(pipeline: Pipeline):
    images = jax.random.uniform(jax.random.PRNGKey(0), (pipeline.train_size, 784))
    labels = jax.random.randint(jax.random.PRNGKey(1), (pipeline.train_size,), 0, 10)
    return images, labels


def train_points(points: list[Pipeline], epochs: int = 2):
    """The points as one program, as a sweep trains them (points of one seed see one data
    order, each step's batch gathered once for all): its final state and each chunk's sums."""
    grid = sweep_program(points, "grid")
    chunk, state = make_train_chunk(grid), init_state(grid)
    images, labels = data(grid.pipeline)
    for _ in range(epochs):
        state, sums = chunk(state, images, labels, num_steps=grid.pipeline.steps_per_epoch)
    return state, sums


def train_single(pipeline: Pipeline, epochs: int = 2):
    state, chunk = init_state(program_of(pipeline)), make_train_chunk(program_of(pipeline))
    images, labels = data(pipeline)
    for _ in range(epochs):
        state, sums = chunk(state, images, labels, num_steps=pipeline.steps_per_epoch)
    return state, sums


def assert_each_model_is_its_single_run(points: list[Pipeline], bit_for_bit: bool = True) -> None:
    grid, sums = train_points(points)
    for k, single_pipeline in enumerate(points):
        single, single_sums = train_single(single_pipeline)
        assert_single_run_bits(model_params(grid.params, k), single.params,
                               bit_for_bit=bit_for_bit)
        assert float(sums["loss_sum"][k]) == pytest.approx(float(single_sums["loss_sum"]),
                                                          rel=1e-5)


def test_only_per_model_keys_share_a_program():
    base = point()
    assert program_key(point("optimizer.learning_rate=0.01", "seed=4",
                                   "model.dropout=0.3")) == program_key(base)
    for shape_or_code in ("model.hidden=[32]", "train.batch_size=50", "train.epochs=3",
                          "model.activation=tanh", "optimizer.name=sgd",
                          "optimizer.schedule=constant"):
        assert program_key(point(shape_or_code)) != program_key(base), shape_or_code


def test_models_of_one_seed_share_a_data_order_and_of_several_do_not():
    one_seed = [point(f"optimizer.learning_rate={lr}") for lr in (0.001, 0.01)]
    assert sweep_program(one_seed, "p").data_orders() == (0, 0)
    seeds = [point(f"seed={seed}", f"optimizer.learning_rate={lr}")
             for lr in (0.001, 0.01) for seed in (0, 1)]
    assert sweep_program(seeds, "p").data_orders() == (0, 1, 0, 1)


def test_a_program_draws_each_seeds_data_order_once_not_each_points():
    """An epoch's order is a few sorts of the whole training set, as dear as a small model's
    step: 3 learning rates x 2 seeds sort for 2 orders."""
    points = [point(f"seed={seed}", f"optimizer.learning_rate={lr}")
              for lr in (0.001, 0.01, 0.1) for seed in (0, 1)]
    grid = sweep_program(points, "grid")
    text = make_train_chunk(grid).lower(init_state(grid), *data(grid.pipeline),
                                        num_steps=2).as_text()
    sorted_orders = {int(n) for n in re.findall(r"call @sort\w*\(%\w+\) : \(tensor<(\d+)x", text)}
    assert sorted_orders == {2}


def test_models_with_their_own_learning_rates_and_seeds_train_their_single_runs():
    assert_each_model_is_its_single_run([
        point("optimizer.learning_rate=0.001", "seed=0"),
        point("optimizer.learning_rate=0.01", "seed=0"),
        point("optimizer.learning_rate=0.003", "seed=5")])


# Every key that switches work off at 0: swept, one model has them all at 0 (which must compute
# exactly what skipping does) and the other has them all on.
REGULARISERS = {"model.dropout": (0.0, 0.3), "model.input_dropout": (0.0, 0.2),
                "model.max_norm": (0.0, 0.5), "augment.rotation": (0.0, 15.0),
                "augment.elastic_alpha": (0.0, 34.0), "optimizer.momentum": (0.5, 0.9)}


def test_swept_regularisers_are_per_model_and_their_zeros_are_exactly_off():
    assert_each_model_is_its_single_run([
        point("optimizer.name=momentum", "optimizer.learning_rate=0.05",
              *(f"{key}={values[k]}" for key, values in REGULARISERS.items()))
        for k in range(2)])


def test_a_swept_elastic_sigma_is_its_single_run_to_float32_rounding():
    """The one per-model key whose points are not their single runs' bits: a single run builds
    its Gaussian kernel with NumPy in float64 from the constant sigma, a program builds each
    model's in float32 on the device."""
    assert_each_model_is_its_single_run([point("augment.elastic_alpha=34",
                                               f"augment.elastic_sigma={sigma}")
                                         for sigma in (4.0, 6.0)], bit_for_bit=False)


@pytest.mark.parametrize("schedule", [
    ("optimizer.schedule=warmup_cosine", "optimizer.warmup_steps=5"),
    ("optimizer.schedule=epoch_decay", "optimizer.decay_per_epoch=0.5"),
    ("optimizer.schedule=cosine", "optimizer.final_lr_fraction=0.1"),
], ids=lambda s: s[0].split("=")[1])
def test_every_schedule_takes_per_model_rates(schedule):
    assert_each_model_is_its_single_run([point(*schedule, f"optimizer.learning_rate={lr}")
                                         for lr in (0.002, 0.02)])


def test_a_diverging_model_stops_alone_at_its_last_finite_state_and_is_reported():
    points = [point("optimizer.name=sgd", "optimizer.learning_rate=0.01"),
              point("optimizer.name=sgd", "optimizer.learning_rate=1e30")]
    grid, sums = train_points(points, epochs=2)  # it diverges in the first, stays in the second
    diverged = np.asarray(grid.diverged_at)
    assert diverged[0] == -1 and 1 < diverged[1] <= points[1].steps_per_epoch
    assert np.all(np.asarray(sums["diverged_at"]) == diverged)
    assert float(sums["loss_sum"][1]) == 0.0  # a stopped model adds nothing to the metrics
    for leaf in jax.tree.leaves(grid.params):
        assert np.all(np.isfinite(np.asarray(leaf)))  # never a NaN in the state
    stopped = run_steps(points[1], int(diverged[1]) - 1)  # its single run, up to that step
    # The live model trains on with its own step count, not the stopped one's. Where bits are
    # not expected to match, a rate of 1e30 (weights ~1e27) magnifies every rounding
    # difference step by step; a step earlier or later would still differ by their whole size.
    assert_single_run_bits(model_params(grid.params, 0), train_single(points[0])[0].params)
    assert_single_run_bits(model_params(grid.params, 1), stopped.params, rtol=1e-2, atol=0)


def run_steps(pipeline: Pipeline, num_steps: int):
    """The single run's state after its first `num_steps` steps (all in its first epoch)."""
    state, chunk = init_state(program_of(pipeline)), make_train_chunk(program_of(pipeline))
    return chunk(state, *data(pipeline), num_steps=num_steps)[0]
