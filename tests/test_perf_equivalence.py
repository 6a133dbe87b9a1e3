"""The fast paths compute what the simple ones do.

An epoch compiled as one `lax.scan` must train the same parameters as a plain Python loop that
calls a jitted `train_step` on host-gathered batches, and K models vmapped in one program must
each train the parameters of their own single run (seed + k). XLA fuses the scan and the loop
differently, so they need only agree to float32 rounding (they happen to agree bit for bit on
XLA:CPU today). The K models must agree bit for bit on XLA:CPU: their products equal the single
run's, and every sum a step takes is a pairwise sum (core/sums.py) whose rounding does not
depend on the model axis. Other backends are held to float32 rounding until measured there.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from digitsjax.core import program, train
from digitsjax.core.config import Pipeline, load_pipeline
from digitsjax.core.model import INITIALIZERS, params_sha256
from digitsjax.core.program import init_state, make_train_chunk, program_of
from digitsjax.core.train import (
    DATA_STREAM,
    epoch_permutation,
    make_optimizer,
    model_params,
    train_step,
)

from .conftest import REPO, assert_single_run_bits

# Adam divides by sqrt(v), so rounding differences grow over an epoch: measured up to 5e-6 on
# parameters of magnitude ~0.1 for vmapped models (before their sums were pairwise), hence a
# few times that as the tolerance where bits are not expected to match.
RTOL, ATOL = 1e-5, 2e-5
AUGMENT = ("augment.rotation=10", "augment.scale=0.1", "augment.elastic_alpha=30",
           "augment.elastic_sigma=5")


def mnist_mlp(*overrides: str) -> Pipeline:
    return load_pipeline(REPO / "pipelines" / "mnist_mlp.toml", overrides)


def step_by_step_epoch(pipeline: Pipeline, images: np.ndarray, labels: np.ndarray):
    """The textbook loop: the host slices each batch of epoch 0's order and calls a jitted step."""
    state = init_state(program_of(pipeline))
    step = jax.jit(functools.partial(train_step, pipeline, make_optimizer(pipeline)))
    order = np.asarray(epoch_permutation(state.key, 0, len(images)))
    batch, losses = pipeline.train.batch_size, []
    for i in range(pipeline.steps_per_epoch):
        idx = order[i * batch:(i + 1) * batch]
        state, metrics = step(state, images[idx], labels[idx])
        losses.append(metrics["loss"])
    return state, float(np.sum(losses))


def scan_epoch(pipeline: Pipeline, images: np.ndarray, labels: np.ndarray):
    whole = program_of(pipeline)
    state, sums = make_train_chunk(whole)(init_state(whole), images, labels,
                                          num_steps=pipeline.steps_per_epoch)
    return state, jax.device_get(sums)


def assert_params_close(actual, expected) -> None:
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=RTOL, atol=ATOL)


def assert_same_training(actual, actual_sums, expected, expected_sums) -> None:
    """Bit for bit on XLA:CPU (parameters and metric sums); float32 rounding elsewhere."""
    assert_single_run_bits(actual, expected, RTOL, ATOL)
    if jax.default_backend() == "cpu":
        assert float(actual_sums["loss_sum"]) == float(expected_sums["loss_sum"])
        assert int(actual_sums["correct"]) == int(expected_sums["correct"])
        return
    assert float(actual_sums["loss_sum"]) == pytest.approx(float(expected_sums["loss_sum"]),
                                                           rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [(), ("model.dropout=0.2",), AUGMENT],
                         ids=["plain", "dropout", "augment"])
def test_a_scanned_epoch_trains_what_a_step_by_step_loop_trains(mnist, overrides):
    pipeline = mnist_mlp(*overrides)
    x, y = mnist.train_images, mnist.train_labels

    looped, loop_loss_sum = step_by_step_epoch(pipeline, x, y)
    scanned, sums = scan_epoch(pipeline, x, y)

    assert int(scanned.step) == int(looped.step) == pipeline.steps_per_epoch
    assert_params_close(scanned.params, looped.params)
    assert float(sums["loss_sum"]) == pytest.approx(loop_loss_sum, rel=1e-5)
    # The training really moved the parameters, so agreement is not agreement at the init.
    start = init_state(program_of(pipeline)).params
    assert not np.allclose(scanned.params[0]["w"], start[0]["w"], atol=1e-3)


@pytest.mark.slow
def test_k_models_train_what_k_single_runs_train(mnist):
    num_models, seed = 3, 5
    small = "data.validation_size=40000"  # an epoch of 15,000 images keeps this test quick
    pipeline = mnist_mlp(f"seed={seed}", f"train.num_models={num_models}", small)
    x, y = mnist.train_images[:pipeline.train_size], mnist.train_labels[:pipeline.train_size]

    stacked, sums = scan_epoch(pipeline, x, y)

    assert np.shape(sums["loss_sum"]) == (num_models,)
    for k in range(num_models):
        single, single_sums = scan_epoch(mnist_mlp(f"seed={seed + k}", small), x, y)
        assert_same_training(model_params(stacked.params, k), model_params(sums, k),
                             single.params, single_sums)


@pytest.mark.parametrize("compiled", [False, True], ids=["op-by-op", "compiled"])
@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_k_models_start_from_exactly_the_single_runs_initial_state(init, compiled, monkeypatch):
    """However many models (a few start op by op, many from one compiled init)."""
    monkeypatch.setattr(program, "COMPILED_INIT_MODELS", 2 if compiled else 4)
    models = program_of(mnist_mlp("seed=7", "train.num_models=3", f"model.init={init}"))
    stacked = init_state(models)
    for k in range(3):
        single = init_state(program_of(mnist_mlp(f"seed={7 + k}", f"model.init={init}")))
        for name in ("params", "opt_state", "key"):
            for a, e in zip(jax.tree.leaves(model_params(getattr(stacked, name), k)),
                            jax.tree.leaves(getattr(single, name)), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
    assert np.shape(stacked.step) == ()  # one step, shared by all models


@pytest.mark.parametrize("num_examples", [1, 2, 10, 1000, 55_000, 60_000, 2**16, 2**16 + 1])
def test_the_epoch_order_is_jax_random_permutation_bit_for_bit(num_examples):
    """The fast packed-sort shuffle is an implementation detail: the data order, and so every
    fingerprint, is exactly what `jax.random.permutation` of the epoch's key gives."""
    root = jax.random.PRNGKey(3)
    for epoch in (0, 1, 14):
        epoch_key = jax.random.fold_in(jax.random.fold_in(root, DATA_STREAM), epoch)
        expected = np.asarray(jax.random.permutation(epoch_key, num_examples))
        actual = np.asarray(jax.jit(epoch_permutation, static_argnums=2)(root, epoch,
                                                                         num_examples))
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(actual, expected)


def test_k_models_shuffle_as_their_single_runs_do():
    roots = jax.vmap(jax.random.PRNGKey)(np.arange(3))
    orders = jax.jit(jax.vmap(epoch_permutation, in_axes=(0, None, None)),
                     static_argnums=2)(roots, 2, 55_000)
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(orders[k]),
                                      np.asarray(epoch_permutation(roots[k], 2, 55_000)))


@pytest.mark.slow
def test_wide_vector_code_trains_the_same_parameters_bit_for_bit(mnist, monkeypatch):
    """`compiler_options()` (512-bit vectors on XLA:CPU) is a speed-up, not a change of maths:
    an epoch compiled with and without it ends with identical bytes (on a CPU without AVX-512
    both compile the same code)."""
    if jax.default_backend() != "cpu":
        pytest.skip("an XLA:CPU option; other backends are compiled without options")
    pipeline = mnist_mlp("data.validation_size=40000", "model.dropout=0.1")
    x, y = mnist.train_images[:pipeline.train_size], mnist.train_labels[:pipeline.train_size]
    assert train.compiler_options() == {"xla_cpu_prefer_vector_width": 512}

    tuned, _ = scan_epoch(pipeline, x, y)
    monkeypatch.setattr(train, "compiler_options", lambda: None)
    default, _ = scan_epoch(pipeline, x, y)

    assert params_sha256(tuned.params) == params_sha256(default.params)


def test_k_models_train_as_two_concurrent_groups_on_one_cpu_device():
    """On XLA:CPU two programs of K/2 models, side by side, keep the cores busier than one of K
    (each model trains its single run either way: test_sweep_programs, test_num_models). The
    split depends on the pipeline and the backend only, so results do too."""
    halves = jax.default_backend() == "cpu"
    assert program.model_groups(8) == ((4, 4) if halves else (8,))
    assert program.model_groups(5) == ((3, 2) if halves else (5,))
    assert program.model_groups(3) == (3,)  # a group of one model would be a single run
    assert program.model_groups(8, devices=2) == (8,)  # a mesh splits each step already


def test_a_state_split_into_groups_joins_back_bit_for_bit():
    state = init_state(program_of(mnist_mlp("train.num_models=5")))
    parts = program.split_models(state, (3, 2))
    assert [part.key.shape[0] for part in parts] == [3, 2]
    assert all(int(part.step) == 0 for part in parts)
    np.testing.assert_array_equal(parts[1].params[0]["w"], state.params[0]["w"][3:])
    for whole, joined in zip(jax.tree.leaves(state), jax.tree.leaves(program.join_models(parts)),
                             strict=True):
        np.testing.assert_array_equal(whole, joined)
