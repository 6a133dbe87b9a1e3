"""The MLP: parameters are a plain pytree, the forward pass is written for one example.

`params` is a list of layers, each `{"w": (fan_in, fan_out), "b": (fan_out,)}`. `forward`
maps one image (784,) to one output (10,); `jax.vmap` batches it, so the code reads like the
maths and XLA still emits one matrix multiply per layer. K models (`train.num_models`) are the
same pytree with a leading model axis on every leaf; `apply` is the one place that tells the
two apart, by the model count the caller knows from the pipeline.

The option families are registries, name -> implementation; config validation reads their keys.
`MATMUL_PRECISIONS` is one of them: every matrix multiply says how precise it must be, so
`train.matmul_precision = "float32"` is true float32 on every backend (JAX's default would let a
GPU use TF32 and a TPU bfloat16), and a run means the same maths wherever it is compiled.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from digitsjax.core.data import NUM_CLASSES, NUM_PIXELS
from digitsjax.core.hyper import known_zero
from digitsjax.core.sums import pairwise_sum, spread

if TYPE_CHECKING:
    from digitsjax.core.config import ModelConfig, Pipeline

Params = list[dict[str, jax.Array]]
Initializer = Callable[[jax.Array, jax.Array, int, int], tuple[jax.Array, jax.Array]]


def _normal(scaled: Callable[[jax.Array, int], jax.Array],
            normal_bias: bool = False) -> Initializer:
    """Weights `scaled(N(0, 1), fan_in)`; biases zero, or N(0, 1) (Nielsen's networks).

    The draw is finished before it is scaled (an optimization barrier): compiled, XLA would
    otherwise fold the scale into the draw's own constant factor and round some weights
    differently from the op-by-op run, and K models initialised in one program would not start
    where their single runs do.
    """
    def init(w_key: jax.Array, b_key: jax.Array, fan_in: int, fan_out: int):
        draw = jax.lax.optimization_barrier(jax.random.normal(w_key, (fan_in, fan_out)))
        w = scaled(draw, fan_in)
        b = jax.random.normal(b_key, (fan_out,)) if normal_bias else jnp.zeros((fan_out,))
        return w, b
    return init


def _glorot(w_key: jax.Array, b_key: jax.Array, fan_in: int, fan_out: int):
    w = jax.nn.initializers.glorot_uniform()(w_key, (fan_in, fan_out), jnp.float32)
    return w, jnp.zeros((fan_out,))


def _uniform(limit: float) -> Initializer:
    def init(w_key: jax.Array, b_key: jax.Array, fan_in: int, fan_out: int):
        w = jax.random.uniform(w_key, (fan_in, fan_out), minval=-limit, maxval=limit)
        return w, jnp.zeros((fan_out,))
    return init


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    # LeCun's scaled tanh, f(+-1) = +-1 with its steepest gain there (Ciresan et al. 2010)
    "scaled_tanh": lambda x: 1.7159 * jnp.tanh(2.0 * x / 3.0),
}
OUTPUT_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,          # logits: the softmax lives in the loss
    "sigmoid": jax.nn.sigmoid,      # Nielsen's output layer
}
INITIALIZERS: dict[str, Initializer] = {
    # N(0, 2/fan_in), for ReLU
    "he": _normal(lambda w, fan_in: w * jnp.sqrt(2.0 / fan_in)),
    # U(+-sqrt(6/(fan_in+fan_out))), for sigmoid and tanh
    "glorot": _glorot,
    # N(0, 1) * 0.01, the from-scratch NumPy network's seed
    "small_normal": _normal(lambda w, _: w * 0.01),
    # U(+-0.05) weights, zero biases: Ciresan et al. (2010)'s deep MLPs
    "small_uniform": _uniform(0.05),
    # N(0, 1) weights and biases, Nielsen's network.py (chapter 1)
    "standard_normal": _normal(lambda w, _: w, normal_bias=True),
    # N(0, 1/fan_in) weights: Nielsen's chapter 3 remedy for saturated sigmoids in wide layers
    "scaled_normal": _normal(lambda w, fan_in: w / jnp.sqrt(fan_in), normal_bias=True),
}


@dataclass(frozen=True)
class MatmulPrecision:
    """How one layer's matrix multiply (and its gradient's) is computed."""

    operands: jnp.dtype
    """What the activations and weights are rounded to for the multiply, and its product's
    type (parameters, optimizer state and everything outside the multiply stay float32)."""
    precision: jax.lax.Precision
    """XLA's precision for float32 operands; ignored by backends that have only one (CPU)."""


MATMUL_PRECISIONS: dict[str, MatmulPrecision] = {
    # float32 on CPU, GPU and TPU alike: the maths of the CPU run
    "float32": MatmulPrecision(jnp.float32, jax.lax.Precision.HIGHEST),
    # TF32 on NVIDIA GPUs since Ampere, 3-pass bfloat16 on TPU; plain float32 on CPU
    "tensorfloat32": MatmulPrecision(jnp.float32, jax.lax.Precision.HIGH),
    # bfloat16 operands and products on every backend (an 8-bit mantissa), in the gradient's
    # multiplies too; float32 accumulation inside each multiply
    "bfloat16": MatmulPrecision(jnp.bfloat16, jax.lax.Precision.DEFAULT),
}
DEFAULT_PRECISION = "float32"


def layer_sizes(config: ModelConfig) -> tuple[int, ...]:
    return (NUM_PIXELS, *config.hidden, NUM_CLASSES)


def parameter_count(config: ModelConfig) -> int:
    return sum(fan_in * fan_out + fan_out
               for fan_in, fan_out in itertools.pairwise(layer_sizes(config)))


def init_params(key: jax.Array, config: ModelConfig) -> Params:
    """Layer i's weights and biases drawn from `fold_in(key, i)` by the pipeline's initializer."""
    init = INITIALIZERS[config.init]
    params = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(layer_sizes(config))):
        w_key, b_key = jax.random.split(jax.random.fold_in(key, i))
        w, b = init(w_key, b_key, fan_in, fan_out)
        params.append({"w": w.astype(jnp.float32), "b": b.astype(jnp.float32)})
    return params


def max_norm(params: Params, limit: float) -> Params:
    """Each unit's incoming weights (a column of w) scaled down to L2 norm `limit` if longer
    (Srivastava et al. 2014); biases are left alone."""
    def project(w: jax.Array) -> jax.Array:
        norms = jnp.sqrt(pairwise_sum(w * w))[None, :]
        # a per-model limit of a sweep may be 0, which means off
        return jnp.where(limit > 0, w * jnp.minimum(1.0, limit / jnp.maximum(norms, 1e-12)), w)

    return [{"w": project(layer["w"]), "b": layer["b"]} for layer in params]


def dense(x: jax.Array, layer: dict[str, jax.Array], precision: str) -> jax.Array:
    """`x @ w + b`, the multiply at `precision` (a key of MATMUL_PRECISIONS), in float32 out.

    The product comes out in the operands' type and only then returns to float32, so the
    gradient's multiplies (its transpose) take the same operand type as the forward's.
    """
    how = MATMUL_PRECISIONS[precision]
    product = jnp.dot(x.astype(how.operands), layer["w"].astype(how.operands),
                      precision=how.precision)
    return product.astype(jnp.float32) + layer["b"]


def forward(params: Params, image: jax.Array, config: ModelConfig,
            dropout_key: jax.Array | None = None, *,
            precision: str = DEFAULT_PRECISION) -> jax.Array:
    """One image (784,) -> one output (10,): logits, or sigmoid activations for Nielsen's net.

    With `dropout_key`, hidden activations are dropped (inverted dropout) at `config.dropout`,
    and input pixels at `config.input_dropout`. `precision` is the pipeline's
    `train.matmul_precision`.
    """
    act = ACTIVATIONS[config.activation]
    x = image
    if dropout_key is not None:  # the input's mask draws from a stream no hidden layer uses
        x = _dropped(x, config.input_dropout, jax.random.fold_in(dropout_key, len(params)))
    for i, layer in enumerate(params[:-1]):
        x = act(dense(x, layer, precision))
        if dropout_key is not None:
            x = _dropped(x, config.dropout, jax.random.fold_in(dropout_key, i))
    out = params[-1]
    return OUTPUT_ACTIVATIONS[config.output_activation](dense(x, out, precision))


def _dropped(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout: each unit zeroed with probability `rate`, the rest scaled up."""
    if known_zero(rate):
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), 0.0)


def spread_biases(params: Params, n: int,
                  shards: int = 1) -> tuple[Params, list[dict[str, int | None]]]:
    """`params` for `forward` vmapped over n examples (split over `shards` devices): each bias
    as n rows, and the `in_axes` that give example i row i (the weights stay one array).

    Training differentiates through this rather than through vmap's own broadcast of the
    biases: a bias's gradient is then summed over the batch by `sums.spread`, in the same
    order in a single run and in a program of K models.
    """
    rows = [{"w": layer["w"], "b": spread(layer["b"], n, shards)} for layer in params]
    return rows, [{"w": None, "b": 0} for _ in params]


def batched_forward(params: Params, images: jax.Array, config: ModelConfig, *,
                    precision: str = DEFAULT_PRECISION) -> jax.Array:
    """(B, 784) -> (B, 10), deterministic (no dropout): one model."""
    one = functools.partial(forward, precision=precision)
    return jax.vmap(one, in_axes=(None, 0, None))(params, images, config)


def apply(params: Params, images: jax.Array, config: ModelConfig, num_models: int, *,
          precision: str = DEFAULT_PRECISION) -> jax.Array:
    """(N, 784) -> outputs (N, 10) of one model, or (K, N, 10) of K stacked models."""
    one = functools.partial(batched_forward, precision=precision)
    if num_models == 1:
        return one(params, images, config)
    return jax.vmap(one, in_axes=(0, None, None))(params, images, config)


def probabilities(outputs: jax.Array, config: ModelConfig) -> jax.Array:
    """Class probabilities: softmax of logits; sigmoid outputs are normalised to sum to one."""
    if config.output_activation == "linear":
        return jax.nn.softmax(outputs, axis=-1)
    return outputs / jnp.sum(outputs, axis=-1, keepdims=True)


def ensemble_probabilities(outputs: jax.Array, config: ModelConfig,
                           num_models: int) -> jax.Array:
    """`apply`'s outputs -> class probabilities (N, 10); K models' are averaged (the ensemble)."""
    probs = probabilities(outputs, config)
    return probs if num_models == 1 else jnp.mean(probs, axis=0)


def classify(params: Params, images: jax.Array, config: ModelConfig, num_models: int, *,
             precision: str = DEFAULT_PRECISION) -> jax.Array:
    """(N, 784) -> class probabilities (N, 10), of one model or of K models' ensemble.

    The one way a trained network is applied: evaluation, prediction and serving all call it,
    at the precision it was trained with.
    """
    outputs = apply(params, images, config, num_models, precision=precision)
    return ensemble_probabilities(outputs, config, num_models)


def make_classify(pipeline: Pipeline) -> Callable[[Params, jax.Array], jax.Array]:
    """A jitted `classify`: `(params, images (N, 784)) -> class probabilities (N, 10)`, without
    dropout.

    It compiles once per batch size, so a server that always sends one image compiles once.
    The params of K models (`train.num_models`, the count the manifest's pipeline records)
    classify as their ensemble: the models' probabilities averaged. The multiplies run at the
    precision the network was trained with (`train.matmul_precision`).
    """
    model, train = pipeline.model, pipeline.train
    return jax.jit(lambda params, images: classify(params, images, model, train.num_models,
                                                   precision=train.matmul_precision))


def params_sha256(params: Params) -> str:
    """The run's fingerprint: sha256 over every parameter's bytes in pytree leaf order.

    Leaf order is fixed (layers in order, then "b" before "w"); bytes are C-order float32.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        digest.update(np.ascontiguousarray(jax.device_get(leaf)))  # its buffer, not a copy
    return digest.hexdigest()
