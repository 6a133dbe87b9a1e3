"""One model's training: its state, its step, its data order, its evaluation.

The train state (`TrainState`) holds the parameters, the optimizer's state, the step and the
root key. Everything random is derived from the root key with `fold_in`: epoch e's data order
from (key, DATA, e), step s's dropout from (key, DROPOUT, s) and its distortions from
(key, AUGMENT, s, example). So the position in the data *is* the step, and a run is a pure
function of its pipeline: resuming at step s replays exactly what an uninterrupted run does.

A chunk of steps (an epoch, or up to the next checkpoint) is one `jax.lax.scan` over device-
resident data: the epoch's permutation is computed on the device, batches are gathered there,
the state is donated, and metrics come back to the host once per epoch. core/program.py
compiles that chunk for 1 or K models.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from digitsjax.core import augment, optim
from digitsjax.core.config import Pipeline
from digitsjax.core.hyper import known_zero
from digitsjax.core.losses import mean_loss
from digitsjax.core.model import (
    apply,
    ensemble_probabilities,
    forward,
    init_params,
    max_norm,
    spread_biases,
)

# Independent random streams folded out of the root key (augment.AUGMENT_STREAM is 3).
INIT_STREAM, DATA_STREAM, DROPOUT_STREAM = 0, 1, 2


@jax.tree_util.register_dataclass
@dataclass(frozen=True, kw_only=True)
class TrainState:
    """Everything the next step depends on: a pytree, donated to and returned by each chunk.

    A K-model program's state has a leading model axis on every part but `step`, which its
    models share (core/program.py). The fields are in the order of their names, so the leaves
    flatten as those of the checkpoint's table (`as_dict`) do.
    """

    diverged_at: jax.Array | None = None
    """A sweep's program: the step at which each model stopped on a NaN/inf (-1: training)."""
    hyper: dict[str, jax.Array] | None = None
    """A sweep's program: each model's own values of the per-model keys (core/hyper.py)."""
    key: jax.Array
    """The root key: init, data order, dropout and distortions are folded out of it."""
    opt_state: Any
    params: Any
    step: jax.Array

    def replace(self, **changes: Any) -> TrainState:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The state as a checkpoint stores it: a table of its parts, the absent ones left out."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if getattr(self, field.name) is not None}

    @classmethod
    def from_dict(cls, parts: dict[str, Any]) -> TrainState:
        return cls(**parts)


def make_optimizer(pipeline: Pipeline) -> optax.GradientTransformation:
    return optim.make_optimizer(pipeline.optimizer, pipeline.total_steps,
                               pipeline.steps_per_epoch)


def init_single_state(pipeline: Pipeline, key: jax.Array) -> TrainState:
    """One model's state at step 0, from its root key."""
    params = init_params(jax.random.fold_in(key, INIT_STREAM), pipeline.model)
    return TrainState(params=params, opt_state=make_optimizer(pipeline).init(params),
                      step=jnp.zeros((), jnp.int32), key=key)


def model_params(params: Any, k: int) -> Any:
    """Model k's slice of a K-model stack of parameters: what the single run with seed + k
    holds."""
    return jax.tree.map(lambda leaf: leaf[k], params)


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The data order of one epoch: a pure function of (root key, epoch).

    Exactly `jax.random.permutation(fold_in(fold_in(key, DATA), epoch), num_examples)`, computed
    several times faster on XLA:CPU, where jax's own sort of keys with values is slow.
    """
    epoch_key = jax.random.fold_in(jax.random.fold_in(key, DATA_STREAM), epoch)
    if num_examples > 2**16:
        return jax.random.permutation(epoch_key, num_examples)
    return _permutation_by_packed_sorts(epoch_key, num_examples)


def _permutation_by_packed_sorts(key: jax.Array, n: int) -> jax.Array:
    """`jax.random.permutation(key, n)` for n <= 2**16, bit for bit.

    jax shuffles with a few rounds of stable sorts by random 32-bit keys (`lax.sort_key_val`).
    XLA:CPU sorts a single uint32 array far faster than keys with values, so each round here is
    a least-significant-digit radix sort: a stable sort by the low 16 bits of the keys, then by
    the high 16 bits. Each pass sorts `digit << 16 | position`, all distinct, so the plain sort
    is stable and its low 16 bits are the order.
    """
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))  # as jax
    order = jnp.arange(n, dtype=jnp.int32)
    position = jnp.arange(n, dtype=jnp.uint32)
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        sort_keys = jax.random.bits(subkey, (n,), jnp.uint32)
        for shift in (0, 16):
            packed = ((sort_keys >> shift) << 16) | position
            by_digit = (jnp.sort(packed) & 0xFFFF).astype(jnp.int32)
            order, sort_keys = order[by_digit], sort_keys[by_digit]
    return order


def train_step(pipeline: Pipeline, optimizer: optax.GradientTransformation, state: TrainState,
               images: jax.Array, labels: jax.Array,
               shards: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on a batch: images (B, 784), labels (B,), distorted here if [augment] is on;
    `shards`: the devices the batch is split over (a mesh's `data` axis)."""
    model, loss_name = pipeline.model, pipeline.train.loss
    if augment.active(pipeline.augment):
        images = augment.distort_step(images, state.key, state.step, pipeline.augment)
    if not (known_zero(model.dropout) and known_zero(model.input_dropout)):
        step_key = jax.random.fold_in(jax.random.fold_in(state.key, DROPOUT_STREAM),
                                      state.step)
        keys, key_axis = jax.random.split(step_key, images.shape[0]), 0
    else:
        keys, key_axis = None, None

    def loss_fn(params):
        one = functools.partial(forward, precision=pipeline.train.matmul_precision)
        rows, axes = spread_biases(params, images.shape[0], shards)
        outputs = jax.vmap(one, in_axes=(axes, 0, None, key_axis))(rows, images, model, keys)
        return mean_loss(outputs, labels, loss_name, shards), outputs

    (loss, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if not known_zero(model.max_norm):
        params = max_norm(params, model.max_norm)
    new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
    correct = jnp.sum(jnp.argmax(outputs, -1) == labels)
    return new_state, {"loss": loss, "correct": correct}


def compiler_options() -> dict[str, Any] | None:
    """XLA options for the training and evaluation programs on the default backend.

    XLA:CPU emits 256-bit vector code by default, even on CPUs with AVX-512, to spare older
    Intel CPUs the clock drop of wide vectors. On AVX-512 CPUs, 512-bit code makes an epoch
    faster and trains the same parameters, bit for bit (a test compares the compiled epochs'
    results). Without AVX-512 the option changes nothing; other backends get none.
    """
    return {"xla_cpu_prefer_vector_width": 512} if jax.default_backend() == "cpu" else None


def epoch_batches(pipeline: Pipeline, split_batch: Callable[[Any], Any], key: jax.Array,
                   step: jax.Array, images: jax.Array,
                   labels: jax.Array) -> Callable[[jax.Array], Any]:
    """`batch(step)`: that step's batch, in the data order of `key` for `step`'s epoch."""
    order = epoch_permutation(key, step // pipeline.steps_per_epoch, images.shape[0])
    return lambda step: batch_at(pipeline, split_batch, order, step, images, labels)


def batch_at(pipeline: Pipeline, split_batch: Callable[[Any], Any], order: jax.Array,
              step: jax.Array, images: jax.Array, labels: jax.Array) -> Any:
    """Step `step`'s batch of an epoch in `order`: each device gathers its slice."""
    size = pipeline.train.batch_size
    idx = jax.lax.dynamic_slice_in_dim(order, (step % pipeline.steps_per_epoch) * size, size)
    return split_batch((images[idx], labels[idx]))


def make_evaluate(pipeline: Pipeline, predictions: bool = False,
                  out_shardings: Any = None) -> Callable[[Any, jax.Array, jax.Array], dict]:
    """A jitted `(params, images, labels) -> {"loss", "accuracy"}` over a whole split.

    For K models: "loss" is the mean of the models' losses and "accuracy" the ensemble's
    (probabilities averaged over models), with each model's in "model_losses" and
    "model_accuracies" and their seed-to-seed standard deviation in "model_accuracy_sd".
    With `predictions`, also the predicted classes (N,) from the same forward pass (what a
    confusion matrix needs; training leaves them on the device). Parameters of more than K
    models (a placement's idle copies, core/placement.py) are evaluated as their first K.
    `out_shardings` places the results (a mesh's replicated sharding: every process reads them).
    """
    model, loss_name, k = pipeline.model, pipeline.train.loss, pipeline.train.num_models

    def accuracy(outputs, labels):
        return jnp.mean(jnp.argmax(outputs, -1) == labels)

    def metrics(outputs, labels):
        if k == 1:
            return {"loss": mean_loss(outputs, labels, loss_name),
                    "accuracy": accuracy(outputs, labels)}
        losses = jax.vmap(mean_loss, in_axes=(0, None, None))(outputs, labels, loss_name)
        accuracies = jax.vmap(accuracy, in_axes=(0, None))(outputs, labels)
        return {"loss": jnp.mean(losses),
                "accuracy": accuracy(ensemble_probabilities(outputs, model, k), labels),
                "model_losses": losses, "model_accuracies": accuracies,
                "model_accuracy_sd": jnp.std(accuracies, ddof=1)}

    @functools.partial(jax.jit, compiler_options=compiler_options(),
                       out_shardings=out_shardings)
    def evaluate(params, images, labels):
        outputs = apply(params, images, model, k, precision=pipeline.train.matmul_precision)
        if k > 1 and outputs.shape[0] > k:
            outputs = outputs[:k]
        result = metrics(outputs, labels)
        if predictions:
            probs = ensemble_probabilities(outputs, model, k)
            result["predictions"] = jnp.argmax(probs, axis=-1)
        return result

    return evaluate


def chunk_plan(pipeline: Pipeline, start_step: int,
               stop_step: int | None = None) -> Iterator[tuple[int, int]]:
    """(first step, number of steps) of every chunk from `start_step` to the end of training
    (or to `stop_step`, an epoch's end before it).

    Chunks end at epoch ends and, with `checkpoint.every_steps`, at its multiples, so each
    checkpoint falls on a chunk boundary and no chunk crosses an epoch. Yielded one at a time,
    by arithmetic: a run may have up to 2**31 steps.
    """
    every, spe = pipeline.checkpoint.every_steps, pipeline.steps_per_epoch
    total = pipeline.total_steps if stop_step is None else stop_step
    current = start_step
    while current < total:
        end = min((current // spe + 1) * spe, total)
        if every:
            end = min(end, (current // every + 1) * every)
        yield current, end - current
        current = end
