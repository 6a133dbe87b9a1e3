"""Distortions on the device: a pure function of (key, step, example), the identity at zero
strength, ink moved rather than created, and in training: off by default, resumable, the same
in a scan as in a loop, each of K models with its own, and worth having."""

from __future__ import annotations

import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digitsjax.core import augment
from digitsjax.core.config import AugmentConfig, load_pipeline
from digitsjax.core.model import apply, params_sha256
from digitsjax.core.program import init_state, make_train_chunk, program_of
from digitsjax.core.train import model_params
from digitsjax.errors import ConfigError
from digitsjax.main import main

from .conftest import (
    REPO,
    SMALL_RUN,
    TINY,
    assert_single_run_bits,
    train_mnist_mlp,
    train_tiny_epoch,
)
from .training_processes import (
    comparable,
    fingerprint,
    finished_epochs,
    saved_steps,
    start_training,
    wait_until,
)

PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
STRONG = AugmentConfig(rotation=15, shear=15, scale=0.15, translation=2, elastic_alpha=34,
                       elastic_sigma=4)
STRONG_SETS = ("augment.rotation=15", "augment.shear=15", "augment.scale=0.15",
               "augment.translation=2", "augment.elastic_alpha=34", "augment.elastic_sigma=4")
ROOT = jax.random.PRNGKey(0)


@pytest.fixture(scope="module")
def digits(mnist):
    return jnp.asarray(mnist.train_images[:256])


def distorted(images, config=STRONG, step=0, root=ROOT):
    return np.asarray(jax.jit(augment.distort_step, static_argnums=3)(images, root, step, config))


def test_zero_strength_is_the_identity_bit_for_bit(digits):
    np.testing.assert_array_equal(distorted(digits, AugmentConfig()), np.asarray(digits))
    assert not augment.active(AugmentConfig())


def test_distortions_are_a_pure_function_of_key_step_and_example(digits):
    first = distorted(digits, step=7)
    np.testing.assert_array_equal(distorted(digits, step=7), first)
    assert not np.array_equal(distorted(digits, step=8), first)
    assert not np.array_equal(distorted(digits, step=7, root=jax.random.PRNGKey(1)), first)
    # example i's distortion depends on its place in the batch, not on the batch around it
    np.testing.assert_array_equal(distorted(digits[:16], step=7), first[:16])


@pytest.mark.parametrize("config", [AugmentConfig(rotation=15), AugmentConfig(shear=15),
                                    AugmentConfig(translation=2)],
                         ids=["rotation", "shear", "translation"])
def test_maps_that_keep_area_move_each_images_ink_without_creating_any(digits, config):
    before, after = np.asarray(digits).sum(1), distorted(digits, config).sum(1)
    np.testing.assert_allclose(after, before, rtol=0.03)
    assert not np.allclose(distorted(digits, config), np.asarray(digits), atol=0.1)


def test_elastic_distortions_keep_the_ink_on_average_and_stay_in_range(digits):
    elastic = AugmentConfig(elastic_alpha=34, elastic_sigma=4)
    out = distorted(digits, elastic)
    assert out.sum() == pytest.approx(float(digits.sum()), rel=0.03)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_scaling_grows_the_ink_with_the_area(digits):
    out = distorted(digits, AugmentConfig(scale=0.15))
    ratios = out.sum(1) / np.asarray(digits).sum(1)
    assert 0.85**2 - 0.05 < ratios.min() < 1.0 < ratios.max() < 1.15**2 + 0.05


def test_the_elastic_field_is_smoothed_by_a_normalised_gaussian():
    g = augment.gaussian_matrix(4.0)
    middle = g[14]
    assert middle.sum() == pytest.approx(1.0, abs=0.01)  # little of the kernel falls outside
    assert middle.argmax() == 14 and np.all(np.diff(middle[14:]) < 0)


@pytest.mark.parametrize("setting, value", [("rotation", -1), ("rotation", 181), ("scale", 1.0),
                                            ("translation", 29), ("elastic_alpha", -1),
                                            ("elastic_sigma", 0), ("shear", 61)])
def test_out_of_range_strengths_are_refused_naming_the_key(setting, value):
    with pytest.raises(ConfigError, match=f"augment.{setting}"):
        load_pipeline(PIPELINE, [f"augment.{setting}={value}"])


def test_augmentation_is_off_by_default_so_existing_runs_train_the_same_bits():
    assert not augment.active(load_pipeline(PIPELINE).augment)
    plain = train_tiny_epoch()
    zero = train_tiny_epoch("augment.rotation=0", "augment.elastic_alpha=0")
    assert params_sha256(zero.params) == params_sha256(plain.params)
    assert params_sha256(train_tiny_epoch(*STRONG_SETS).params) != \
        params_sha256(plain.params)


def test_augmented_training_is_reproducible_and_each_of_k_models_draws_its_own():
    once, again = train_tiny_epoch(*STRONG_SETS), train_tiny_epoch(*STRONG_SETS)
    assert params_sha256(once.params) == params_sha256(again.params)

    pipeline = load_pipeline(PIPELINE, [*TINY, *STRONG_SETS, "seed=3", "train.num_models=2"])
    images = jax.random.uniform(jax.random.PRNGKey(0), (pipeline.train_size, 784))
    labels = jax.random.randint(jax.random.PRNGKey(1), (pipeline.train_size,), 0, 10)
    program = program_of(pipeline)
    stacked, _ = make_train_chunk(program)(init_state(program), images, labels,
                                           num_steps=pipeline.steps_per_epoch)
    for k in range(2):
        single = train_tiny_epoch(*STRONG_SETS, f"seed={3 + k}")
        assert_single_run_bits(model_params(stacked.params, k), single.params)


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_fingerprint(tmp_path, mnist_dir):
    sets = (*SMALL_RUN, *STRONG_SETS)
    reference = train_mnist_mlp(tmp_path / "whole", sets, mnist_dir)
    workdir, log = tmp_path / "stopped", tmp_path / "log"
    args = ["train", str(PIPELINE), "--workdir", str(workdir), *(f"--set={s}" for s in sets)]
    proc = start_training(args, log)
    wait_until(lambda: finished_epochs(workdir) == 1, proc)  # now early in epoch 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()
    pipeline = load_pipeline(PIPELINE, sets)
    assert pipeline.steps_per_epoch < saved_steps(workdir)[-1] < pipeline.total_steps

    assert main(args) == 0
    assert fingerprint(workdir, pipeline.total_steps) == \
        fingerprint(reference, pipeline.total_steps)
    assert comparable(workdir) == comparable(reference)


@pytest.mark.slow
def test_training_with_augmentation_reads_distorted_digits_better(mnist):
    """The point of it all: on validation digits distorted as in training (with draws no
    training step saw), the augmented network beats the same network trained without."""
    x, y = jnp.asarray(mnist.train_images), jnp.asarray(mnist.train_labels)
    unseen = distorted(jnp.asarray(mnist.val_images), root=jax.random.PRNGKey(12345))

    def distorted_accuracy(*overrides: str) -> float:
        pipeline = load_pipeline(PIPELINE, ["model.hidden=[128]", "train.epochs=3", *overrides])
        state, chunk = init_state(program_of(pipeline)), make_train_chunk(program_of(pipeline))
        for _ in range(pipeline.train.epochs):
            state, _ = chunk(state, x, y, num_steps=pipeline.steps_per_epoch)
        predicted = jnp.argmax(apply(state.params, unseen, pipeline.model, 1), -1)
        return float(jnp.mean(predicted == mnist.val_labels))

    plain, augmented = distorted_accuracy(), distorted_accuracy(*STRONG_SETS)
    assert augmented > plain + 0.1, (plain, augmented)
