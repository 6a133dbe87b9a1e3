"""Programs as pure placement on a mesh of every device of every process.

One model (and what a split leaves over) is data parallel, on the `data` axis: every global
batch is split over its devices, while parameters, optimizer state and the MNIST arrays are
replicated on each device. A device gathers its own slice of each batch from its replica of the
training set, so every process feeds exactly its devices' slices with no input pipeline, and
nothing crosses the host inside a chunk. XLA's SPMD partitioner turns the batch-mean loss into
per-device partial sums plus an all-reduce. The pipeline's batch size is the *global* batch size:
a run computes the same maths on 1 or 64 devices, up to the float rounding of those sums.

A K-model program's models are split over the `model` axis first (core/placement.py): each
device trains its own models on its own copy of the batch, so with at least as many models as
devices a step holds no collective, and each model keeps its one-device bits. How processes
join is the run's business (run/cluster.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from digitsjax.core.placement import DATA_AXIS, MODEL_AXIS, Placement, pad_models, unpad_models
from digitsjax.errors import ConfigError, setting

P = PartitionSpec

Tree = TypeVar("Tree")


def data_mesh() -> Mesh:
    """Every device of every process on the `data` axis, in JAX's topology-aware order."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def program_mesh(placement: Placement) -> Mesh:
    """The mesh of a program placed by `placement`: the `data` mesh unless its models are
    split, else (`model`, `data`) axes over every device of every process."""
    if not placement.split:
        return data_mesh()
    return jax.make_mesh((placement.model_shards, placement.data_shards),
                         (MODEL_AXIS, DATA_AXIS), axis_types=(AxisType.Auto, AxisType.Auto))


def model_specs(state: Any) -> Any:
    """The partition specs of a K-model train state split by model: every part on the model
    axis but the one step the models share."""
    return jax.tree.map(lambda _: P(MODEL_AXIS), state.replace(step=None)).replace(step=P())


def place_models(state: Any, mesh: Mesh, placement: Placement) -> Any:
    """A K-model state (host or device arrays, whole in every process) onto `mesh`: padded to
    the placement's models and split by model, each process filling its own devices' parts."""
    host = jax.device_get(state)
    padded = pad_models(host.replace(step=None), placement).replace(step=host.step)
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), model_specs(padded))

    def put(array: Any, sharding: NamedSharding) -> jax.Array:
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
    return jax.tree.map(put, padded, shardings)


def host_models(state: Any, placement: Placement) -> Any:
    """`place_models` undone: the K models' state as host arrays, whole, in every process."""
    host = to_host(state)
    return unpad_models(host.replace(step=None), placement).replace(step=host.step)


def to_host(tree: Tree) -> Tree:
    """Device arrays as whole host arrays in every process: one gather over the processes where
    the devices of others hold parts of them."""
    if all(leaf.is_fully_addressable or leaf.is_fully_replicated
           for leaf in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def batch_shards(mesh: Mesh | None) -> int:
    """How many devices each batch is split over (1 without a mesh)."""
    return 1 if mesh is None else mesh.shape[DATA_AXIS]


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, devices: int) -> None:
    """The global batch is split evenly, so that every device does the same work."""
    if batch_size % devices:
        multiple = -(-batch_size // devices) * devices
        raise ConfigError(f"'train.batch_size' {batch_size} does not split evenly over the "
                          f"{devices} devices", f"use a multiple of {devices}, e.g. "
                          f"{setting('train.batch_size', multiple)}")


def replicate(tree: Tree, mesh: Mesh) -> Tree:
    """A full copy of `tree` on every device of the mesh, from this process's copy of it.

    Every process must pass the same values (the same pipeline gives the same init and data).
    """
    return jax.make_array_from_process_local_data(replicated(mesh), jax.device_get(tree))


def split_batch(mesh: Mesh | None) -> Callable[[Tree], Tree]:
    """Inside jit: split arrays with a leading batch axis over `data` (unchanged without a mesh)."""
    if mesh is None:
        return lambda tree: tree
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return lambda tree: jax.lax.with_sharding_constraint(tree, sharding)


def split_batch_within() -> Callable[[Tree], Tree]:
    """`split_batch` inside `shard_map` over the `model` axis: over the `data` axis of the mesh
    in context (the mesh itself, whose `model` axis is manual there, is not that mesh)."""
    return lambda tree: jax.lax.with_sharding_constraint(tree, PartitionSpec(DATA_AXIS))


def replicated_outputs(mesh: Mesh | None) -> dict[str, Any]:
    """`jax.jit` arguments that keep every output replicated (none without a mesh).

    Inputs need none: `replicate` commits them to the mesh and jit follows committed arrays
    (jit refuses `in_shardings` with keyword arguments such as `num_steps`).
    """
    if mesh is None:
        return {}
    return {"out_shardings": replicated(mesh)}
