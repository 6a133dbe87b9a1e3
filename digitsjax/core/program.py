"""One compiled program of 1 or K models: what digitsjax trains, and why each model of it is
its own single run, bit for bit.

A `Program` is a pipeline and, for a sweep, each model's own values of the per-model keys.
With `train.num_models = K` and no per-model values, model k is the single run with seed
`seed + k` (an ensemble of seeds); a sweep's program holds grid points that share their array
shapes and code, model k with its point's values (`core.hyper.PerModel`: the optimizer's
numbers, dropout, max-norm, distortion strengths, seed). Everything the K models do differently
lives in the train state, which gains a leading model axis on every part but the step they
share, and one chunk of steps runs under `jax.vmap`: K models, one program.

Model k ends at its single run's parameters and metrics, bit for bit on XLA:CPU. XLA would
otherwise compile a K-model program's arithmetic unlike a single run's in three places, and
each has its remedy:
1. Sums. XLA picks a reduction's order from the whole array's shape, model axis included.
   Every sum a step takes is a pairwise sum (core/sums.py: the biases' batch gradients, the
   classes of log_softmax, the batch's mean loss, max-norm's column norms), which performs the
   same float32 additions per element with or without a model axis around it.
2. Step counters. optax keeps a counter per model; as a (K,) array XLA compiles Adam's bias
   correction as a multiply by a reciprocal, as a scalar as a division. The counters enter the
   vmapped step as one shared value (`_shared_counters`).
3. A shared batch. Models that share a data order (one seed) would multiply their one batch
   by all K models' weights as one wide product, blocked differently; each model multiplies its
   own copy instead (`_models_batches`).

A program may train as concurrent groups of its models (`groups`): on one CPU device two
programs of K/2 run side by side faster than one of K, and a model's bits do not depend on its
group. A sweep's program guards its steps so that a model that turns NaN/inf stops alone at its
last finite state (`_sweep_chunk`).
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from digitsjax.core import sharding
from digitsjax.core.config import Pipeline, pipeline_to_dict
from digitsjax.core.hyper import PER_MODEL, SEED, PerModel, with_values
from digitsjax.core.placement import Placement, local_orders
from digitsjax.core.train import (
    TrainState,
    batch_at,
    compiler_options,
    epoch_batches,
    epoch_permutation,
    init_single_state,
    make_optimizer,
    train_step,
)


@dataclass(frozen=True)
class Program:
    """The models one compiled program trains: `pipeline.train.num_models` of them."""

    pipeline: Pipeline
    per_model: PerModel | None = None
    """A sweep's points: each model's own values of the keys on which they differ."""

    @property
    def num_models(self) -> int:
        return self.pipeline.train.num_models

    @property
    def is_sweep(self) -> bool:
        """Whether the models are grid points trained with different numbers (their ensemble is
        nobody's network, and one that diverges stops alone), rather than one pipeline's seeds."""
        return self.per_model is not None

    def seeds(self) -> list[int]:
        """Model k's seed: its root key for init, data order, dropout and distortions."""
        if self.per_model is not None:
            return self.per_model.seeds(self.pipeline)
        return [self.pipeline.seed + k for k in range(self.num_models)]

    def data_orders(self) -> tuple[int, ...]:
        """Model k's data order: that of the first model with its seed (the seed is the key of
        the order in which a model sees the data)."""
        first: dict[int, int] = {}
        return tuple(first.setdefault(seed, k) for k, seed in enumerate(self.seeds()))

    def model(self, k: int) -> Pipeline:
        """Model k as the single run it equals: its seed, its point's values, one model."""
        if self.per_model is not None:
            return self.per_model.point(self.pipeline, k)
        if self.num_models == 1:
            return self.pipeline
        return with_values(self.pipeline, {SEED: self.pipeline.seed + k, "train.num_models": 1})

    def models(self, start: int, stop: int) -> Program:
        """Models start..stop-1 as a program of their own (a concurrent group)."""
        values: dict[str, Any] = {"train.num_models": stop - start}
        if self.per_model is None:
            values[SEED] = self.pipeline.seed + start
        per_model = self.per_model.models(start, stop) if self.per_model is not None else None
        return Program(with_values(self.pipeline, values), per_model)

    def groups(self, devices: int = 1) -> tuple[Program, ...]:
        """The concurrent groups that train this program's models, in model order."""
        sizes = model_groups(self.num_models, devices)
        if len(sizes) == 1:
            return (self,)
        bounds = np.cumsum((0, *sizes)).tolist()
        return tuple(self.models(a, b) for a, b in itertools.pairwise(bounds))

    def to_json(self) -> dict[str, list[float]] | None:
        """What a manifest records beside the pipeline: the per-model values, or None."""
        return self.per_model.to_json() if self.per_model is not None else None


def program_of(pipeline: Pipeline) -> Program:
    """A pipeline's own program: its `train.num_models` seeds."""
    return Program(pipeline)


def recorded_program(pipeline: Pipeline, per_model: dict[str, list[Any]] | None) -> Program:
    """The program a manifest records: its pipeline and `Program.to_json`'s table."""
    if not per_model:
        return Program(pipeline)
    return Program(pipeline, PerModel({key: tuple(v) for key, v in per_model.items()}))


def sweep_program(points: list[Pipeline], name: str) -> Program:
    """Pipelines of one program (equal `program_key`s) as its models, named `name`."""
    if len(points) == 1:
        return Program(points[0])
    pipeline = with_values(points[0], {"train.num_models": len(points), "name": name})
    return Program(pipeline, per_model_of(points))


def per_model_of(points: list[Pipeline]) -> PerModel:
    """The values of `points` (pipelines of one program) for the keys on which they differ."""
    varying = {}
    for key in PER_MODEL:
        values = tuple(_get(p, key) for p in points)
        if len(set(values)) > 1:
            varying[key] = values
    if not varying:  # identical points still need one key to count them
        varying[SEED] = tuple(p.seed for p in points)
    return PerModel(varying)


def program_key(pipeline: Pipeline) -> str:
    """What must be equal for pipelines to train in one program: all but the per-model keys
    (and the name)."""
    raw = pipeline_to_dict(pipeline)
    raw.pop("name")
    for key in PER_MODEL:
        *sections, leaf = key.split(".")
        table = raw
        for section in sections:
            table = table[section]
        table.pop(leaf)
    return json.dumps(raw, sort_keys=True)


def _get(pipeline: Pipeline, key: str) -> Any:
    value: Any = pipeline
    for part in key.split("."):
        value = getattr(value, part)
    return value


MIN_GROUP = 2
"""The fewest models a concurrent group trains: a group of one would be a single run's program,
whose state has no model axis."""


def model_groups(num_models: int, devices: int = 1) -> tuple[int, ...]:
    """How many models each of a K-model run's concurrent programs trains, in model order.

    XLA:CPU runs a program's operations one after another, and many keep only part of the cores
    busy (the small layers, the optimizer's passes), so two programs of K/2 models, run side by
    side, train K models sooner than one program of K (docs/sweeps.md has the measurements). A
    model trains its single run's bits in any group, so the split changes the time, not the
    result. One device only: a mesh (also one of several processes) already splits each step
    over its devices, and other backends run one program.
    """
    if jax.default_backend() != "cpu" or devices > 1 or num_models < 2 * MIN_GROUP:
        return (num_models,)
    return (num_models - num_models // 2, num_models // 2)


# The train state of K models.

COMPILED_INIT_MODELS = 32
"""From this many models on, their states come from one compiled loop over the single init;
fewer are initialised op by op, which is quicker than compiling for a few dozen models."""


def init_state(program: Program) -> TrainState:
    """The state at step 0: a single run's, or the K single runs' stacked on a model axis.

    A sweep's state also carries its points' values (`hyper`) and a `diverged_at` step per model
    (an optimizer's initial state does not depend on its numbers: each point's is its program's).
    """
    seeds = program.seeds()
    if len(seeds) == 1:
        return init_single_state(program.pipeline, jax.random.PRNGKey(seeds[0]))
    stacked = _stacked_initial_states(program.pipeline, seeds).replace(
        step=jnp.zeros((), jnp.int32))
    if program.per_model is None:
        return stacked
    return stacked.replace(hyper=jax.tree.map(jnp.asarray, program.per_model.state_values()),
                           diverged_at=jnp.full((len(seeds),), -1, jnp.int32))


def model_states(state: TrainState, num_models: int) -> list[TrainState]:
    """A program's state as each of its models' own, as its single run holds it at that step:
    no model axis, and none of a sweep's per-model values (its program gives them)."""
    alone = state.replace(hyper=None, diverged_at=None)
    if num_models == 1:
        return [alone]
    return [_per_model_map(lambda leaf, k=k: leaf[k], alone) for k in range(num_models)]


def continued_state(program: Program, states: list[TrainState],
                    diverged_at: list[int] | None = None) -> TrainState:
    """The state of `program` whose model k continues `states[k]` (single runs' states at one
    step, `model_states`): `init_state`'s layout, at their step, as host arrays; for a sweep's
    program, model k stopped at step `diverged_at[k]` if that is not -1."""
    if len(states) == 1:
        return states[0]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves),  # on the host: no compiling
                           *(s.replace(step=None) for s in states)).replace(step=states[0].step)
    if program.per_model is None:
        return stacked
    stopped = [-1] * len(states) if diverged_at is None else diverged_at
    return stacked.replace(hyper=program.per_model.state_values(),
                           diverged_at=np.asarray(stopped, np.int32))


def _stacked_initial_states(pipeline: Pipeline, seeds: list[int]) -> TrainState:
    """The single runs' initial states, stacked on a model axis, bit for bit either way: the
    normal initializers finish their draw before scaling it (model.py), so compiled, XLA
    cannot fold the scale into the draw's own constants and round differently."""
    keys = [jax.random.PRNGKey(seed) for seed in seeds]
    if len(seeds) >= COMPILED_INIT_MODELS:
        return _compiled_inits(pipeline, jnp.asarray(np.stack(keys)))
    return jax.tree.map(lambda *leaves: jnp.stack(leaves),
                        *(init_single_state(pipeline, key) for key in keys))


@functools.partial(jax.jit, static_argnums=0)
def _compiled_inits(pipeline: Pipeline, keys: jax.Array) -> TrainState:
    return jax.lax.map(functools.partial(init_single_state, pipeline), keys)


def model_axes(state: TrainState) -> TrainState:
    """The `in_axes`/`out_axes` of a K-model state: the model axis leads every part but the
    one step that all K models share (and advance)."""
    return jax.tree.map(lambda _: 0, state.replace(step=None))


def split_models(state: TrainState, sizes: tuple[int, ...]) -> list[TrainState]:
    """A K-model state as consecutive groups of `sizes` models, each with its own copy of the
    shared step (a chunk consumes the state it is given)."""
    bounds = np.cumsum((0, *sizes)).tolist()
    return [_per_model_map(lambda leaf, a=a, b=b: leaf[a:b], state).replace(
        step=jnp.copy(state.step)) for a, b in itertools.pairwise(bounds)]


def join_models(parts: list[TrainState]) -> TrainState:
    """`split_models` undone: the groups' states as one."""
    return join_sums([part.replace(step=None) for part in parts]).replace(step=parts[0].step)


def join_sums(parts: list[Any]) -> Any:
    """The groups' per-model values (their metric sums, or states less the shared step) as one
    program's, model after model."""
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts)


def _per_model_map(fn: Callable[[jax.Array], jax.Array], state: TrainState) -> TrainState:
    """`fn` applied to every per-model leaf; the shared step kept as it is."""
    return jax.tree.map(fn, state.replace(step=None)).replace(step=state.step)


# The compiled chunk.

def make_train_chunk(program: Program, mesh: Mesh | None = None,
                     data_orders: tuple[int, ...] | None = None,
                     placement: Placement | None = None
                     ) -> Callable[..., tuple[TrainState, dict]]:
    """A jitted `(state, images, labels, num_steps) -> (state, metric sums)`.

    Runs `num_steps` steps from `state.step`, which must all lie in one epoch. The state is
    donated; `num_steps` is static, so each distinct chunk length compiles once. With a `mesh`
    (inputs replicated over it), each step's batch is split over its `data` axis and the
    outputs stay replicated (see sharding.py); the maths is the same. For K models the metric
    sums have shape (K,) (under vmap, each model's batch is split over `data` the same way).
    With a `placement` that splits the models (core/placement.py), the state comes and stays
    split over the mesh's `model` axis, padded to `placement.padded` models, and each device
    runs the chunk of its own models alone. `data_orders` replaces the program's own
    (`Program.data_orders`) for a benchmark's sake.
    """
    if placement is not None and placement.split:
        return _split_chunk(program, mesh, placement)
    body = _chunk_body(program, data_orders or program.data_orders(),
                       sharding.split_batch(mesh), sharding.batch_shards(mesh))

    @functools.partial(jax.jit, static_argnames="num_steps", donate_argnums=0,
                       compiler_options=compiler_options(), **sharding.replicated_outputs(mesh))
    def train_chunk(state, images, labels, num_steps):
        return body(state, images, labels, num_steps)

    return train_chunk


def _split_chunk(program: Program, mesh: Mesh, placement: Placement
                 ) -> Callable[..., tuple[TrainState, dict]]:
    """The chunk of a program whose models are split over the mesh's `model` axis: each device
    runs the one-device chunk of its own models (their data orders among themselves), so a step
    holds no collective between models; a `data` axis, if any, splits each model's batch."""
    body = _chunk_body(program, local_orders(program.seeds(), placement),
                       sharding.split_batch_within() if placement.data_shards > 1 else _same,
                       placement.data_shards)

    @functools.partial(jax.jit, static_argnames="num_steps", donate_argnums=0,
                       compiler_options=compiler_options())
    def train_chunk(state, images, labels, num_steps):
        specs = sharding.model_specs(state)
        local = jax.shard_map(functools.partial(body, num_steps=num_steps), mesh=mesh,
                              in_specs=(specs, sharding.P(), sharding.P()),
                              out_specs=(specs, sharding.P(sharding.MODEL_AXIS)),
                              axis_names={sharding.MODEL_AXIS}, check_vma=False)
        return local(state, images, labels)

    return train_chunk


def _same(tree: Any) -> Any:
    return tree


def _chunk_body(program: Program, orders: tuple[int, ...], split: Callable[[Any], Any],
                shards: int) -> Callable[..., tuple[TrainState, dict]]:
    """`(state, images, labels, num_steps) -> (state, sums)` of one device's models, traced."""
    def one_model_chunk(state, images, labels, num_steps, masked):
        batch = epoch_batches(program.pipeline, split, state.key, state.step, images, labels)
        step = _model_step(program, shards, masked)
        end, metrics = jax.lax.scan(lambda s, _: step(s, *batch(s.step)), state,
                                    length=num_steps)
        return end, _chunk_sums(state.step, metrics, end, masked)

    def models_chunk(state, images, labels, num_steps, masked):
        axes, models = model_axes(state), _models_in(state)
        batch = _models_batches(program.pipeline, orders, split, state.key, state.step, images,
                                labels)
        counters, in_axes = _shared_counters(state)
        steps = _over_models(_model_step(program, shards, masked), in_axes=(in_axes, 0, 0),
                             out_axes=(axes, 0), models=models)
        end, metrics = jax.lax.scan(lambda s, _: steps(counters(s), *batch(s.step)), state,
                                    length=num_steps)
        sums = _over_models(functools.partial(_chunk_sums, masked=masked),
                            in_axes=(None, 1, axes), out_axes=0, models=models)
        return end, sums(state.step, metrics, end)

    def body(state, images, labels, num_steps):
        def chunk(state, masked=False):
            run = models_chunk if program.num_models > 1 else one_model_chunk
            return run(state, images, labels, num_steps, masked)

        return _sweep_chunk(chunk, state) if program.is_sweep else chunk(state)

    return body


def _over_models(fn: Callable[..., Any], in_axes: Any, out_axes: Any,
                 models: int) -> Callable[..., Any]:
    """`jax.vmap` of `fn` over the model axis, except for one model, which runs unbatched, as
    its single run does: XLA:CPU computes a batch of one model's products otherwise than one
    product, and rounds them otherwise. A device of a split program may hold one model."""
    if models > 1:
        return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)

    def on_axes(change: Callable[[jax.Array, int], jax.Array], axes: Any, tree: Any) -> Any:
        return jax.tree.map(lambda axis, part: part if axis is None else jax.tree.map(
            lambda leaf: change(leaf, axis), part), axes, tree, is_leaf=lambda x: x is None)

    def one(*args: Any) -> Any:
        return on_axes(jnp.expand_dims, out_axes, fn(*on_axes(jnp.squeeze, in_axes, args)))
    return one


def _models_in(state: TrainState) -> int:
    """How many models a K-model state holds (here, on this device)."""
    return jax.tree.leaves(state.params)[0].shape[0]


def _model_step(program: Program, shards: int,
                masked: bool) -> Callable[..., tuple[TrainState, dict]]:
    """One model's step, with its own values of a sweep's per-model keys (`masked`: guarded)."""
    def step(state: TrainState, images: jax.Array, labels: jax.Array):
        own = with_values(program.pipeline, state.hyper) if program.is_sweep \
            else program.pipeline
        step_fn = functools.partial(train_step, own, make_optimizer(own), shards=shards)
        return _masked_step(step_fn, state, images, labels) if masked else \
            step_fn(state, images, labels)
    return step


def _shared_counters(state: TrainState) -> tuple[Callable[[TrainState], TrainState], TrainState]:
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

    in_axes = model_axes(state).replace(opt_state=jax.tree.map(
        lambda leaf: None if is_counter(leaf) else 0, state.opt_state))

    def counters(state: TrainState) -> TrainState:
        return state.replace(opt_state=jax.tree.map(
            lambda leaf: jnp.max(leaf, axis=0) if is_counter(leaf) else leaf, state.opt_state))
    return counters, in_axes


def _models_batches(pipeline: Pipeline, orders: tuple[int, ...],
                    split_batch: Callable[[Any], Any], keys: jax.Array, step: jax.Array,
                    images: jax.Array, labels: jax.Array) -> Callable[[jax.Array], Any]:
    """`batch(step)` of K models: (K, B, ...) arrays, model k's batch in the order of model
    `orders[k]`'s key. Each distinct order is drawn and each step's batch gathered once
    (sorts and gathers from the whole training set cost as much per order as a small model's
    step); each model still gets its own copy of the batch (remedy 3 above)."""
    distinct = sorted(set(orders))
    draw = jax.vmap(epoch_permutation, in_axes=(0, None, None))
    permutations = draw(keys[np.asarray(distinct)], step // pipeline.steps_per_epoch,
                        images.shape[0])
    position = {order: i for i, order in enumerate(distinct)}
    which = np.asarray([position[order] for order in orders])
    gather = jax.vmap(functools.partial(batch_at, pipeline, split_batch),
                      in_axes=(0, None, None, None))

    def batch(step: jax.Array) -> Any:
        gathered = gather(permutations, step, images, labels)
        if len(distinct) == len(orders):  # each model its own: already in model order
            return gathered
        return jax.tree.map(lambda a: a[which], gathered)
    return batch


def _chunk_sums(first_step: jax.Array, metrics: dict[str, jax.Array], end: TrainState,
                masked: bool) -> dict[str, jax.Array]:
    """One model's chunk: its metric sums and the step it diverged at (-1: none)."""
    diverged_at = end.diverged_at if masked else \
        _first_nonfinite_step(first_step, metrics["loss"], end.params)
    return {"loss_sum": jnp.sum(metrics["loss"]), "correct": jnp.sum(metrics["correct"]),
            "diverged_at": diverged_at}


# A sweep's guarded steps.

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
    stopped = state.diverged_at >= 0

    def restore_stopped():
        kept = _per_model_where(stopped, state.replace(step=None), trained.replace(step=None))
        return kept.replace(step=trained.step), {
            "loss_sum": jnp.where(stopped, 0.0, sums["loss_sum"]),
            "correct": jnp.where(stopped, 0, sums["correct"]),
            "diverged_at": state.diverged_at}

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
    finite = jnp.isfinite(metrics["loss"]) & _all_finite(new.params)
    was_alive = state.diverged_at < 0
    alive = was_alive & finite
    params, opt_state = jax.tree.map(lambda n, o: jnp.where(alive, n, o),
                                     (new.params, new.opt_state),
                                     (state.params, state.opt_state))
    diverged_at = jnp.where(was_alive & ~finite, new.step, state.diverged_at)
    metrics = {"loss": jnp.where(alive, metrics["loss"], 0.0),
               "correct": jnp.where(alive, metrics["correct"], 0)}
    return new.replace(params=params, opt_state=opt_state, diverged_at=diverged_at), metrics


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
