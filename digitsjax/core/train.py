"""Training: a pure train state, one compiled program per chunk of steps, and the epoch loop.

The train state is a plain dict `{"params", "opt_state", "step", "key"}`. Everything random is
derived from the root key with `fold_in`: epoch e's data order from (key, DATA, e), step s's
dropout from (key, DROPOUT, s) and its distortions from (key, AUGMENT, s, example). So the
position in the data *is* the step, and a run is a pure function of its pipeline: resuming at
step s replays exactly what an uninterrupted run does.

A chunk of steps (an epoch, or up to the next checkpoint) is one `jax.lax.scan` over device-
resident data: the epoch's permutation is computed on the device, batches are gathered there,
the state is donated, and metrics come back to the host once per epoch.

With `train.num_models = K > 1` the state gains a leading model axis (on everything but the
shared step) and the same chunk runs under `jax.vmap`, all K models in one program. Model k is
the single run with seed `seed + k`: the same init, data order and dropout, and on XLA:CPU the
same parameters and metrics after training, bit for bit. That takes care in three places where
XLA would otherwise compile a K-model program's arithmetic unlike a single run's: every sum is
a pairwise sum (sums.py), each model multiplies its own copy of its batch, and the optimizer's
step counters are one shared value (`_shared_counters`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from digitsjax.core import augment, optim, sharding
from digitsjax.core.config import Pipeline
from digitsjax.core.hyper import PerModel, known_zero, with_values
from digitsjax.core.losses import mean_loss
from digitsjax.core.model import (
    apply,
    ensemble_probabilities,
    forward,
    init_params,
    max_norm,
    spread_biases,
)

TrainState = dict[str, Any]

# Independent random streams folded out of the root key (augment.AUGMENT_STREAM is 3).
INIT_STREAM, DATA_STREAM, DROPOUT_STREAM = 0, 1, 2


def model_axes(state: TrainState) -> dict[str, int | None]:
    """Where the model axis of a K-model train state is: on everything but the one step that
    all K models share (and advance); a sweep's state also carries per-model `hyper` values
    and `diverged_at` steps."""
    return {name: None if name == "step" else 0 for name in state}


def make_optimizer(pipeline: Pipeline) -> optax.GradientTransformation:
    return optim.make_optimizer(pipeline.optimizer, pipeline.total_steps,
                               pipeline.steps_per_epoch)


def init_train_state(pipeline: Pipeline, per_model: PerModel | None = None) -> TrainState:
    """The state at step 0; for K models, the K single-run states stacked on a model axis.

    With `per_model` (a sweep's models of one program), model k starts as the single run of
    its own point, and the state carries the points' values and a `diverged_at` per model
    (an optimizer's initial state does not depend on its numbers: each point's is its
    program's).
    """
    seeds = per_model.seeds(pipeline) if per_model is not None else \
        [pipeline.seed + k for k in range(pipeline.train.num_models)]
    if len(seeds) == 1:
        return _init_single_state(pipeline, jax.random.PRNGKey(seeds[0]))
    stacked = _stacked_initial_states(pipeline, seeds) | {"step": jnp.zeros((), jnp.int32)}
    if per_model is not None:
        stacked |= {"hyper": jax.tree.map(jnp.asarray, per_model.state_values()),
                    "diverged_at": jnp.full((len(seeds),), -1, jnp.int32)}
    return stacked


def _init_single_state(pipeline: Pipeline, key: jax.Array) -> TrainState:
    params = init_params(jax.random.fold_in(key, INIT_STREAM), pipeline.model)
    return {
        "params": params,
        "opt_state": make_optimizer(pipeline).init(params),
        "step": jnp.zeros((), jnp.int32),
        "key": key,
    }


COMPILED_INIT_MODELS = 32
"""From this many models on, their states come from one compiled loop over the single init;
fewer are initialised op by op, which is quicker than compiling for a few dozen models."""


def _stacked_initial_states(pipeline: Pipeline, seeds: list[int]) -> TrainState:
    """The single runs' initial states, stacked on a model axis, bit for bit either way: the
    normal initializers finish their draw before scaling it (model.py), so compiled, XLA
    cannot fold the scale into the draw's own constants and round differently."""
    keys = [jax.random.PRNGKey(seed) for seed in seeds]
    if len(seeds) >= COMPILED_INIT_MODELS:
        return _compiled_inits(pipeline, jnp.asarray(np.stack(keys)))
    return jax.tree.map(lambda *leaves: jnp.stack(leaves),
                        *(_init_single_state(pipeline, key) for key in keys))


@functools.partial(jax.jit, static_argnums=0)
def _compiled_inits(pipeline: Pipeline, keys: jax.Array) -> TrainState:
    return jax.lax.map(functools.partial(_init_single_state, pipeline), keys)


def model_params(params: Any, k: int) -> Any:
    """Model k's slice of a K-model stack (its parameters, or any per-model part of the state):
    what the single run with seed + k holds."""
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
        images = augment.distort_step(images, state["key"], state["step"], pipeline.augment)
    if not (known_zero(model.dropout) and known_zero(model.input_dropout)):
        step_key = jax.random.fold_in(jax.random.fold_in(state["key"], DROPOUT_STREAM),
                                      state["step"])
        keys, key_axis = jax.random.split(step_key, images.shape[0]), 0
    else:
        keys, key_axis = None, None

    def loss_fn(params):
        one = functools.partial(forward, precision=pipeline.train.matmul_precision)
        rows, axes = spread_biases(params, images.shape[0], shards)
        outputs = jax.vmap(one, in_axes=(axes, 0, None, key_axis))(rows, images, model, keys)
        return mean_loss(outputs, labels, loss_name, shards), outputs

    (loss, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if not known_zero(model.max_norm):
        params = max_norm(params, model.max_norm)
    new_state = state | {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
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


MIN_GROUP = 2
"""The fewest models a concurrent group trains: a group of one would be a single run's program,
whose state has no model axis."""


def model_groups(num_models: int, devices: int = 1) -> tuple[int, ...]:
    """How many models each of a K-model run's concurrent programs trains, in model order.

    XLA:CPU runs a program's operations one after another, and many keep only part of the cores
    busy (the small layers, the optimizer's passes; YNNPACK's products use little more than one
    core). Two programs of K/2 models each, run side by side, train the K models in about 0.6-0.7
    of one program's time on 2 cores (docs/sweeps.md). On XLA:CPU a model trains its single
    run's bits in any group, so the split changes the time, not the result; it is two, as
    measured on 2 cores, whatever the machine. One device only: a mesh
    (also one of several processes) already splits each step over its devices, and other
    backends run one program.
    """
    if jax.default_backend() != "cpu" or devices > 1 or num_models < 2 * MIN_GROUP:
        return (num_models,)
    return (num_models - num_models // 2, num_models // 2)


def split_models(state: TrainState, sizes: tuple[int, ...]) -> list[TrainState]:
    """A K-model state as consecutive groups of `sizes` models, each with its own copy of the
    shared step (a chunk consumes the state it is given)."""
    axes, bounds = model_axes(state), np.cumsum((0, *sizes))
    return [{name: jax.tree.map(jnp.copy, value) if axes[name] is None else
             jax.tree.map(lambda leaf, a=start, b=stop: leaf[a:b], value)
             for name, value in state.items()} for start, stop in itertools.pairwise(bounds)]


def join_models(parts: list[Any]) -> Any:
    """`split_models` undone: the groups' states (or their per-model metric sums) as one."""
    first, axes = parts[0], model_axes(parts[0])  # sums have no shared step: all per model
    return {name: first[name] if axes[name] is None else
            jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *(part[name] for part in parts))
            for name in first}


def make_train_chunk(pipeline: Pipeline, mesh: Mesh | None = None,
                     data_orders: tuple[int, ...] | None = None
                     ) -> Callable[..., tuple[TrainState, dict]]:
    """A jitted `(state, images, labels, num_steps) -> (state, metric sums)`.

    Runs `num_steps` steps from `state["step"]`, which must all lie in one epoch. The state is
    donated; `num_steps` is static, so each distinct chunk length compiles once. With a `mesh`
    (inputs replicated over it), each step's batch is split over its `data` axis and the
    outputs stay replicated (see sharding.py); the maths is the same. For K models the metric
    sums have shape (K,) (under vmap, each model's batch is split over `data` the same way).
    `data_orders[k]`: the first model with model k's seed, whose data order model k shares
    (default: each model its own). Each distinct order is drawn, and each step's batch
    gathered, once for the models that share it (a sweep's points of one seed). Each model
    still multiplies its own copy of the batch: K models sharing one batch would make each
    layer's multiply one wide product, which XLA blocks, and so rounds, differently from the
    single run's.
    """
    split = sharding.split_batch(mesh)
    model_step = functools.partial(_model_step, pipeline, sharding.batch_shards(mesh))
    orders = data_orders or tuple(range(pipeline.train.num_models))

    def one_model_chunk(state, images, labels, num_steps, masked):
        batch = _epoch_batches(pipeline, split, state["key"], state["step"], images, labels)
        step = model_step(state, masked)
        end, metrics = jax.lax.scan(lambda s, _: step(s, *batch(s["step"])), state,
                                    length=num_steps)
        return end, _chunk_sums(state["step"], metrics, end, masked)

    def models_chunk(state, images, labels, num_steps, masked):
        axes = model_axes(state)
        batch = _models_batches(pipeline, split, orders, state["key"], state["step"], images,
                                labels)
        counters, in_axes = _shared_counters(state)
        steps = jax.vmap(lambda s, x, y: model_step(s, masked)(s, x, y),
                         in_axes=(in_axes, 0, 0), out_axes=(axes, 0))
        end, metrics = jax.lax.scan(lambda s, _: steps(counters(s), *batch(s["step"])), state,
                                    length=num_steps)
        sums = jax.vmap(functools.partial(_chunk_sums, masked=masked), in_axes=(None, 1, axes))
        return end, sums(state["step"], metrics, end)

    @functools.partial(jax.jit, static_argnames="num_steps", donate_argnums=0,
                       compiler_options=compiler_options(), **sharding.replicated_outputs(mesh))
    def train_chunk(state, images, labels, num_steps):
        def chunk(state, masked=False):
            run = models_chunk if pipeline.train.num_models > 1 else one_model_chunk
            return run(state, images, labels, num_steps, masked)

        return _sweep_chunk(chunk, state) if "diverged_at" in state else chunk(state)

    return train_chunk


def _shared_counters(state: TrainState) -> tuple[Callable[[TrainState], TrainState], dict]:
    """The K models' optimizer step counters as the one value they share, and the `in_axes`
    that hand it to every model.

    optax keeps a counter per model (an integer leaf of the optimizer state). As a (K,) array
    XLA compiles Adam's bias correction, a division by 1 - b^t, as a multiply by its reciprocal,
    and a single run's scalar as a division: the K models would round differently from their
    single runs. The counters are equal but for a sweep's stopped models, whose counters stay
    behind and whose updates are discarded; the live ones are the largest.
    """
    def is_counter(leaf: jax.Array) -> bool:
        return jnp.issubdtype(leaf.dtype, jnp.integer)

    in_axes = model_axes(state) | {"opt_state": jax.tree.map(
        lambda leaf: None if is_counter(leaf) else 0, state["opt_state"])}

    def counters(state: TrainState) -> TrainState:
        return state | {"opt_state": jax.tree.map(
            lambda leaf: jnp.max(leaf, axis=0) if is_counter(leaf) else leaf,
            state["opt_state"])}
    return counters, in_axes


def _model_step(pipeline: Pipeline, shards: int, state: TrainState,
                masked: bool) -> Callable[..., tuple[TrainState, dict]]:
    """One model's step, with its own values of a sweep's per-model keys (`masked`: guarded)."""
    own = with_values(pipeline, state["hyper"]) if "hyper" in state else pipeline
    step_fn = functools.partial(train_step, own, make_optimizer(own), shards=shards)
    return functools.partial(_masked_step, step_fn) if masked else step_fn


def _epoch_batches(pipeline: Pipeline, split_batch: Callable[[Any], Any], key: jax.Array,
                   step: jax.Array, images: jax.Array,
                   labels: jax.Array) -> Callable[[jax.Array], Any]:
    """`batch(step)`: that step's batch, in the data order of `key` for `step`'s epoch."""
    order = epoch_permutation(key, step // pipeline.steps_per_epoch, images.shape[0])
    return lambda step: _batch_at(pipeline, split_batch, order, step, images, labels)


def _models_batches(pipeline: Pipeline, split_batch: Callable[[Any], Any],
                    orders: tuple[int, ...], keys: jax.Array, step: jax.Array,
                    images: jax.Array, labels: jax.Array) -> Callable[[jax.Array], Any]:
    """`batch(step)` of K models: (K, B, ...) arrays, model k's batch in the order of model
    `orders[k]`'s key. Each distinct order is drawn and each step's batch gathered once (sorts
    and gathers from the whole training set cost as much per order as a small model's step)."""
    distinct = sorted(set(orders))
    draw = jax.vmap(epoch_permutation, in_axes=(0, None, None))
    permutations = draw(keys[np.asarray(distinct)], step // pipeline.steps_per_epoch,
                        images.shape[0])
    position = {order: i for i, order in enumerate(distinct)}
    which = np.asarray([position[order] for order in orders])
    gather = jax.vmap(functools.partial(_batch_at, pipeline, split_batch),
                      in_axes=(0, None, None, None))

    def batch(step: jax.Array) -> Any:
        gathered = gather(permutations, step, images, labels)
        if len(distinct) == len(orders):  # each model its own: already in model order
            return gathered
        return jax.tree.map(lambda a: a[which], gathered)
    return batch


def _batch_at(pipeline: Pipeline, split_batch: Callable[[Any], Any], order: jax.Array,
              step: jax.Array, images: jax.Array, labels: jax.Array) -> Any:
    """Step `step`'s batch of an epoch in `order`: each device gathers its slice."""
    size = pipeline.train.batch_size
    idx = jax.lax.dynamic_slice_in_dim(order, (step % pipeline.steps_per_epoch) * size, size)
    return split_batch((images[idx], labels[idx]))


def _chunk_sums(first_step: jax.Array, metrics: dict[str, jax.Array], end: TrainState,
                masked: bool) -> dict[str, jax.Array]:
    """One model's chunk: its metric sums and the step it diverged at (-1: none)."""
    diverged_at = end["diverged_at"] if masked else \
        _first_nonfinite_step(first_step, metrics["loss"], end["params"])
    return {"loss_sum": jnp.sum(metrics["loss"]), "correct": jnp.sum(metrics["correct"]),
            "diverged_at": diverged_at}


def _sweep_chunk(models_chunk: Callable[..., tuple[TrainState, dict]],
                 state: TrainState) -> tuple[TrainState, dict]:
    """A sweep's chunk, where a model that turns NaN/inf stops alone at its last finite state.

    Guarding every step costs a pass over every model's state per step, so the models first
    train unguarded: the plain K-model program. Only if a model that was still training turned
    non-finite in this chunk does the chunk run again from its start with every step guarded
    (`_masked_step`). Either way the result is what guarding every step gives. Models stopped in
    an earlier chunk get their kept state back and add nothing to the sums.
    """
    trained, sums = models_chunk(state)
    stopped = state["diverged_at"] >= 0

    def restore_stopped():
        axes = model_axes(trained)  # the shared step has none
        kept = {name: value if axes[name] is None else
                _per_model_where(stopped, state[name], value) for name, value in trained.items()}
        return kept, {"loss_sum": jnp.where(stopped, 0.0, sums["loss_sum"]),
                      "correct": jnp.where(stopped, 0, sums["correct"]),
                      "diverged_at": state["diverged_at"]}

    diverged_now = jnp.any((sums["diverged_at"] >= 0) & ~stopped)
    return jax.lax.cond(diverged_now, lambda: models_chunk(state, masked=True), restore_stopped)


def _per_model_where(mask: jax.Array, if_true: Any, if_false: Any) -> Any:
    """Model k's part of `if_true` where mask[k], else of `if_false` (leaves with a model axis)."""
    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, if_true, if_false)


def _masked_step(step_fn: Callable[..., tuple[TrainState, dict]], state: TrainState,
                 images: jax.Array, labels: jax.Array) -> tuple[TrainState, dict]:
    """A sweep's step: a model whose loss or parameters turn NaN/inf stops there, its state
    kept as it was and the step recorded in `diverged_at`, while the others train on."""
    new, metrics = step_fn(state, images, labels)
    finite = jnp.isfinite(metrics["loss"]) & _all_finite(new["params"])
    was_alive = state["diverged_at"] < 0
    alive = was_alive & finite
    kept = jax.tree.map(lambda n, o: jnp.where(alive, n, o),
                        {"params": new["params"], "opt_state": new["opt_state"]},
                        {"params": state["params"], "opt_state": state["opt_state"]})
    diverged_at = jnp.where(was_alive & ~finite, new["step"], state["diverged_at"])
    metrics = {"loss": jnp.where(alive, metrics["loss"], 0.0),
               "correct": jnp.where(alive, metrics["correct"], 0)}
    return new | kept | {"diverged_at": diverged_at}, metrics


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _first_nonfinite_step(first_step: jax.Array, losses: jax.Array, params: Any) -> jax.Array:
    """The 1-based step whose loss was first NaN/inf in this chunk, else -1.

    A last update that made the params non-finite (its loss still finite) counts too: such a
    state must never be checkpointed.
    """
    finite_losses = jnp.isfinite(losses)
    params_finite = _all_finite(params)
    return jnp.where(~jnp.all(finite_losses), first_step + jnp.argmin(finite_losses) + 1,
                     jnp.where(params_finite, -1, first_step + losses.shape[0]))


def make_evaluate(pipeline: Pipeline,
                  predictions: bool = False) -> Callable[[Any, jax.Array, jax.Array], dict]:
    """A jitted `(params, images, labels) -> {"loss", "accuracy"}` over a whole split.

    For K models: "loss" is the mean of the models' losses and "accuracy" the ensemble's
    (probabilities averaged over models), with each model's in "model_losses" and
    "model_accuracies" and their seed-to-seed standard deviation in "model_accuracy_sd".
    With `predictions`, also the predicted classes (N,) from the same forward pass (what a
    confusion matrix needs; training leaves them on the device).
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

    @functools.partial(jax.jit, compiler_options=compiler_options())
    def evaluate(params, images, labels):
        outputs = apply(params, images, model, k, precision=pipeline.train.matmul_precision)
        result = metrics(outputs, labels)
        if predictions:
            probs = ensemble_probabilities(outputs, model, k)
            result["predictions"] = jnp.argmax(probs, axis=-1)
        return result

    return evaluate


def chunk_plan(pipeline: Pipeline, start_step: int) -> Iterator[tuple[int, int]]:
    """(first step, number of steps) of every chunk from `start_step` to the end of training.

    Chunks end at epoch ends and, with `checkpoint.every_steps`, at its multiples, so each
    checkpoint falls on a chunk boundary and no chunk crosses an epoch. Yielded one at a time,
    by arithmetic: a run may have up to 2**31 steps.
    """
    every, spe, total = pipeline.checkpoint.every_steps, pipeline.steps_per_epoch, \
        pipeline.total_steps
    current = start_step
    while current < total:
        end = min((current // spe + 1) * spe, total)
        if every:
            end = min(end, (current // every + 1) * every)
        yield current, end - current
        current = end
