"""The MLP: parameters are a plain pytree, the forward pass is written for one example.

`params` is a list of layers, each `{"w": (fan_in, fan_out), "b": (fan_out,)}`. `forward`
maps one image (784,) to one output (10,); `jax.vmap` batches it, so the code reads like the
maths and XLA still emits one matrix multiply per layer.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from digitsjax.config import ModelConfig
from digitsjax.data import NUM_CLASSES, NUM_PIXELS

Params = list[dict[str, jax.Array]]

ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}


def layer_sizes(config: ModelConfig) -> tuple[int, ...]:
    return (NUM_PIXELS, *config.hidden, NUM_CLASSES)


def init_params(key: jax.Array, config: ModelConfig) -> Params:
    """Weights drawn per layer from `fold_in(key, layer)`; biases zero unless the init says so.

    he: N(0, 2/fan_in), for ReLU.  glorot: U(+-sqrt(6/(fan_in+fan_out))), for sigmoid/tanh.
    small_normal: N(0, 1) * 0.01, the from-scratch NumPy network's seed.
    standard_normal: N(0, 1) weights and biases, Nielsen's network.py (chapter 1).
    scaled_normal: N(0, 1/fan_in) weights, N(0, 1) biases, Nielsen's chapter 3 remedy for the
        saturated sigmoids that standard_normal gives wider layers.
    """
    sizes = layer_sizes(config)
    params = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w_key, b_key = jax.random.split(jax.random.fold_in(key, i))
        shape = (fan_in, fan_out)
        b = jnp.zeros((fan_out,), jnp.float32)
        match config.init:
            case "he":
                w = jax.random.normal(w_key, shape) * jnp.sqrt(2.0 / fan_in)
            case "glorot":
                w = jax.nn.initializers.glorot_uniform()(w_key, shape, jnp.float32)
            case "small_normal":
                w = jax.random.normal(w_key, shape) * 0.01
            case "standard_normal":
                w = jax.random.normal(w_key, shape)
                b = jax.random.normal(b_key, (fan_out,))
            case "scaled_normal":
                w = jax.random.normal(w_key, shape) / jnp.sqrt(fan_in)
                b = jax.random.normal(b_key, (fan_out,))
            case _:
                raise ValueError(f"unknown init {config.init!r}")
        params.append({"w": w.astype(jnp.float32), "b": b.astype(jnp.float32)})
    return params


def forward(params: Params, image: jax.Array, config: ModelConfig,
            dropout_key: jax.Array | None = None) -> jax.Array:
    """One image (784,) -> one output (10,): logits, or sigmoid activations for Nielsen's net.

    With `dropout_key`, hidden activations are dropped (inverted dropout) at `config.dropout`.
    """
    act = ACTIVATION_FNS[config.activation]
    x = image
    for i, layer in enumerate(params[:-1]):
        x = act(x @ layer["w"] + layer["b"])
        if dropout_key is not None and config.dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), 1 - config.dropout,
                                        x.shape)
            x = jnp.where(keep, x / (1 - config.dropout), 0.0)
    out = params[-1]
    return ACTIVATION_FNS[config.output_activation](x @ out["w"] + out["b"])


def batched_forward(params: Params, images: jax.Array, config: ModelConfig) -> jax.Array:
    """(B, 784) -> (B, 10), deterministic (no dropout): what evaluation and serving use."""
    return jax.vmap(forward, in_axes=(None, 0, None))(params, images, config)


def example_loss(output: jax.Array, label: jax.Array, loss: str) -> jax.Array:
    """The loss of one example; `label` is an integer class, one-hot encoded where needed."""
    if loss == "softmax_cross_entropy":
        return -jax.nn.log_softmax(output)[label]
    if loss == "quadratic":  # Nielsen's cost: 1/2 ||a - y||^2 with one-hot y
        return 0.5 * jnp.sum((output - jax.nn.one_hot(label, NUM_CLASSES)) ** 2)
    raise ValueError(f"unknown loss {loss!r}")


def probabilities(outputs: jax.Array, config: ModelConfig) -> jax.Array:
    """Class probabilities: softmax of logits; sigmoid outputs are normalised to sum to one."""
    if config.output_activation == "linear":
        return jax.nn.softmax(outputs, axis=-1)
    return outputs / jnp.sum(outputs, axis=-1, keepdims=True)


def ensemble_probabilities(outputs: jax.Array, config: ModelConfig) -> jax.Array:
    """K models' outputs (K, N, 10) -> the ensemble's class probabilities (N, 10): their mean."""
    return jnp.mean(probabilities(outputs, config), axis=0)


def params_sha256(params: Params) -> str:
    """The run's fingerprint: sha256 over every parameter's bytes in pytree leaf order.

    Leaf order is fixed (layers in order, then "b" before "w"); bytes are C-order float32.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return digest.hexdigest()
