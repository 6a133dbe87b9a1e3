"""The per-example model batched by vmap is the textbook MLP, and its gradients are right."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digitsjax.core.config import ModelConfig
from digitsjax.core.losses import example_loss
from digitsjax.core.model import (
    batched_forward,
    forward,
    init_params,
    params_sha256,
    probabilities,
)

CONFIGS = {
    "relu-logits": ModelConfig(hidden=(16, 8), activation="relu", init="he"),
    "sigmoid-nielsen": ModelConfig(hidden=(12,), activation="sigmoid", output_activation="sigmoid",
                                   init="standard_normal"),
    "tanh-glorot": ModelConfig(hidden=(10,), activation="tanh", init="glorot"),
    "logistic-regression": ModelConfig(hidden=(), init="small_normal"),
}


def numpy_mlp(params, images, config):
    """The plain batched computation, written independently in NumPy."""
    acts = {"relu": lambda z: np.maximum(z, 0), "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
            "tanh": np.tanh, "linear": lambda z: z}
    x = np.asarray(images, np.float64)
    for i, layer in enumerate(params):
        z = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        last = i == len(params) - 1
        x = acts[config.output_activation if last else config.activation](z)
    return x


def images(n=5, seed=0):
    return jax.random.uniform(jax.random.PRNGKey(seed), (n, 784))


@pytest.mark.parametrize("name", CONFIGS)
def test_vmapped_forward_equals_the_plain_batched_computation(name):
    config = CONFIGS[name]
    params = init_params(jax.random.PRNGKey(1), config)
    x = images()
    np.testing.assert_allclose(batched_forward(params, x, config), numpy_mlp(params, x, config),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(forward(params, x[2], config), batched_forward(params, x, config)[2],
                               rtol=1e-6, atol=1e-6)


def test_layer_shapes_follow_the_config():
    params = init_params(jax.random.PRNGKey(0), ModelConfig(hidden=(128, 64)))
    assert [p["w"].shape for p in params] == [(784, 128), (128, 64), (64, 10)]
    assert [p["b"].shape for p in params] == [(128,), (64,), (10,)]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("init, expected_std", [
    ("he", np.sqrt(2 / 784)), ("small_normal", 0.01), ("standard_normal", 1.0),
    ("glorot", np.sqrt(6 / (784 + 300)) / np.sqrt(3)), ("scaled_normal", 1 / np.sqrt(784)),
    ("small_uniform", 0.05 / np.sqrt(3)),
])
def test_initialisations_have_their_textbook_scale(init, expected_std):
    w = init_params(jax.random.PRNGKey(0), ModelConfig(hidden=(300,), init=init))[0]["w"]
    assert float(jnp.std(w)) == pytest.approx(expected_std, rel=0.03)
    assert abs(float(jnp.mean(w))) < 0.05 * expected_std


def test_init_is_a_pure_function_of_the_key():
    config = CONFIGS["relu-logits"]
    same = params_sha256(init_params(jax.random.PRNGKey(5), config))
    assert same == params_sha256(init_params(jax.random.PRNGKey(5), config))
    assert same != params_sha256(init_params(jax.random.PRNGKey(6), config))


@pytest.mark.parametrize("name, loss", [("relu-logits", "softmax_cross_entropy"),
                                        ("sigmoid-nielsen", "quadratic"),
                                        ("tanh-glorot", "quadratic")])
def test_gradients_match_finite_differences(name, loss):
    config = CONFIGS[name]
    params = init_params(jax.random.PRNGKey(2), config)
    x, y = images(4), jnp.array([3, 1, 4, 1])

    @jax.jit
    def total(p):
        outputs = batched_forward(p, x, config)
        return jnp.mean(jax.vmap(example_loss, in_axes=(0, 0, None))(outputs, y, loss))

    grads = jax.grad(total)(params)
    rng = np.random.default_rng(0)
    eps = 1e-2
    for layer, grad_layer in zip(params, grads, strict=True):
        for name_ in ("w", "b"):
            flat = np.asarray(layer[name_]).ravel()
            for index in rng.choice(flat.size, size=3, replace=False):
                def bumped(delta, layer=layer, name_=name_, index=index):
                    new = np.asarray(layer[name_]).ravel().copy()
                    new[index] += delta
                    saved = layer[name_]
                    layer[name_] = jnp.asarray(new.reshape(saved.shape))
                    value = float(total(params))
                    layer[name_] = saved
                    return value
                numeric = (bumped(eps) - bumped(-eps)) / (2 * eps)
                analytic = float(np.asarray(grad_layer[name_]).ravel()[index])
                assert analytic == pytest.approx(numeric, rel=0.05, abs=2e-4)


def test_losses_on_a_known_example():
    logits = jnp.array([2.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0])
    expected_ce = -np.log(np.exp(2) / (np.exp(2) + 9))
    assert float(example_loss(logits, 0, "softmax_cross_entropy")) == pytest.approx(expected_ce)
    outputs = jnp.full(10, 0.5)
    assert float(example_loss(outputs, 7, "quadratic")) == pytest.approx(0.5 * (9 * 0.25 + 0.25))


def test_probabilities_sum_to_one_for_both_output_kinds():
    for name in ("relu-logits", "sigmoid-nielsen"):
        config = CONFIGS[name]
        params = init_params(jax.random.PRNGKey(0), config)
        probs = probabilities(batched_forward(params, images(), config), config)
        np.testing.assert_allclose(jnp.sum(probs, -1), 1.0, rtol=1e-5)
        assert bool(jnp.all(probs >= 0))


def test_dropout_is_keyed_and_off_without_a_key():
    config = ModelConfig(hidden=(64,), dropout=0.5)
    params = init_params(jax.random.PRNGKey(0), config)
    x = images(1)[0]
    plain = forward(params, x, config)
    a = forward(params, x, config, jax.random.PRNGKey(1))
    assert not np.allclose(a, plain)
    np.testing.assert_array_equal(a, forward(params, x, config, jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(plain, batched_forward(params, x[None], config)[0])
