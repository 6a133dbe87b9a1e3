"""What the literature's MLPs need: LeCun's scaled tanh, a learning rate that decays per epoch
down to a floor, the max-norm constraint, and online SGD (batch size 1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digitsjax.core.config import load_pipeline
from digitsjax.core.model import ACTIVATIONS
from digitsjax.core.optim import SCHEDULES
from digitsjax.errors import ConfigError
from digitsjax.run.loop import train_pipeline

from .conftest import REPO, train_tiny_epoch

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
def test_scaled_tanh_maps_plus_minus_one_to_themselves():
    f = ACTIVATIONS["scaled_tanh"]
    np.testing.assert_allclose(f(jnp.array([-1.0, 0.0, 1.0])), [-1.0, 0.0, 1.0], atol=1e-4)
    assert float(f(jnp.array(100.0))) == pytest.approx(1.7159, rel=1e-6)


def test_epoch_decay_multiplies_the_rate_after_every_epoch_down_to_the_floor():
    pipeline = load_pipeline(PIPELINE, ["optimizer.schedule=epoch_decay",
                                        "optimizer.learning_rate=0.1",
                                        "optimizer.decay_per_epoch=0.5",
                                        "optimizer.min_learning_rate=0.01"])
    spe = pipeline.steps_per_epoch
    rate = SCHEDULES["epoch_decay"].make(pipeline.optimizer, pipeline.total_steps, spe)
    rates = [float(rate(step)) for step in (0, spe - 1, spe, 2 * spe, 3 * spe, 10 * spe)]
    assert rates == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.0125, 0.01])
    assert not SCHEDULES["epoch_decay"].over_total_steps  # so a finished run may go on


def trained_params(*overrides: str):
    return train_tiny_epoch(*overrides).params


def test_max_norm_keeps_every_units_incoming_weights_within_the_limit():
    free = trained_params("optimizer.learning_rate=0.05")
    held = trained_params("optimizer.learning_rate=0.05", "model.max_norm=0.5")
    assert max(float(jnp.linalg.norm(layer["w"], axis=0).max()) for layer in free) > 0.5
    for layer in held:
        assert float(jnp.linalg.norm(layer["w"], axis=0).max()) <= 0.5 + 1e-5


def test_a_max_norm_that_never_binds_changes_nothing_bit_for_bit():
    for a, b in zip(jax.tree.leaves(trained_params()),
                    jax.tree.leaves(trained_params("model.max_norm=1e6")), strict=True):
        np.testing.assert_array_equal(a, b)


def test_online_sgd_with_batch_size_one_trains(tmp_path, mnist_dir):
    pipeline = load_pipeline(PIPELINE, ["model.hidden=[16]", "data.validation_size=59900",
                                        "train.batch_size=1", "train.epochs=1",
                                        "optimizer.name=sgd", "optimizer.learning_rate=0.01"])
    record = train_pipeline(pipeline, tmp_path, echo=lambda _: None)
    assert record["step"] == 100 and np.isfinite(record["train_loss"])


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.decay_per_epoch=0", "'optimizer.decay_per_epoch' must be in (0, 1], got 0.0"),
    ("optimizer.decay_per_epoch=1.5", "'optimizer.decay_per_epoch' must be in (0, 1], got 1.5"),
    ("optimizer.min_learning_rate=0.1", "'optimizer.min_learning_rate' must be between 0 and "
     "optimizer.learning_rate (0.001), got 0.1"),
    ("model.max_norm=-1", "'model.max_norm' must be >= 0 (0 = off), got -1.0"),
])
def test_bad_values_are_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_pipeline(PIPELINE, [override])
    assert str(error.value) == f"{PIPELINE}: {message}"


def test_input_dropout_drops_pixels_at_its_rate_while_training_and_never_in_evaluation():
    from digitsjax.core.config import ModelConfig
    from digitsjax.core.model import forward

    config = ModelConfig(hidden=(784,), input_dropout=0.5)
    # the hidden layer copies the input and the output averages it: output = kept / (1 - rate)
    params = [{"w": jnp.eye(784), "b": jnp.zeros(784)},
              {"w": jnp.full((784, 10), 1 / 784), "b": jnp.zeros(10)}]
    ones = jnp.ones(784)
    kept = [float(forward(params, ones, config, jax.random.PRNGKey(s))[0]) * 0.5
            for s in range(3)]
    assert all(0.44 < k < 0.56 for k in kept) and len(set(kept)) == 3
    assert float(forward(params, ones, config)[0]) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ConfigError, match=r"model\.input_dropout"):
        load_pipeline(PIPELINE, ["model.input_dropout=1.0"])
