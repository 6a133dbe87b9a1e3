"""How much memory a run needs, from its pipeline alone, before anything is allocated.

A run that does not fit would be killed by the operating system or fail deep inside XLA. The
estimate is of the process's peak resident memory, and errs high rather than low. Its parts:

- the process: Python, JAX, XLA and the libraries a run imports, and the compiled programs;
  the same for every pipeline, so for a small network it is most of the run. It lives in the
  host's memory, never an accelerator's.
- MNIST: the float32 images of both splits. On a CPU the device arrays are the host's own (no
  copy is made); an accelerator holds them once more, in its own memory.
- the parameters and optimizer state of the K models. A sweep's program holds them twice: a
  chunk keeps the state it started from until it knows no model diverged in it. So does a run
  whose models train in concurrent groups (`model_groups`): the groups' states are joined into
  a new one at each chunk's end.
- a checkpoint: the host copy of the state that a save checksums and hands to orbax, and orbax's
  own buffers while it writes; the save is asynchronous, so it is held while the next epoch
  trains and evaluates. In the host's memory.
- the larger of the two programs' working sets, one at a time:
  - a training step: the gradients, and for each example and each unit of every layer the
    buffers XLA keeps between the forward and the backward pass (the pre-activation, the
    activation and the gradient flowing back; with dropout also its random bits and mask; in
    a sweep's program one more, for the guarded copy of the chunk that its divergence check
    runs again), and the batch's images, gathered once per data order (per seed), with the
    sampling grids of augmentation or the input-dropout mask beside them.
  - an evaluation: a whole split's activations at once, for every model.

The arrays' sum is raised by a margin for what is not counted one by one: XLA's smaller
temporaries and the allocator's unused pieces.
"""

from __future__ import annotations

import jax

from digitsjax.core import augment, optim
from digitsjax.core.config import Pipeline
from digitsjax.core.data import NUM_PIXELS, SPLIT_SIZES
from digitsjax.core.model import init_params, layer_sizes, parameter_count
from digitsjax.core.placement import placement_for
from digitsjax.core.program import model_groups

FLOAT32 = 4
PROCESS = "the process"
MNIST = "MNIST"
STATE = "the parameters and optimizer state"
CHECKPOINT = "a checkpoint"
STEP = "a training step"
EVALUATION = "an evaluation"
HOST_PARTS = (PROCESS, CHECKPOINT)
"""Held once by the process, in the host's memory; the others once by each device."""

PROCESS_BYTES = 768 * 2**20
"""The process before any array of the run: the peak of the smallest networks, trains and
sweeps, compiling their programs (bench/memory_estimate.py), less their MNIST, and a margin."""
UNIT_BUFFERS = 3
"""Per example and unit, the float32 buffers of a training step: pre-activation, activation,
the gradient flowing back."""
DROPOUT_BUFFERS = 2
"""More per example and unit with dropout: its random bits and its mask."""
SWEEP_BUFFERS = 1
"""More per example and unit in a sweep's program, whose chunk holds a guarded copy of itself."""
IMAGE_BUFFERS = 2
"""More per example and pixel when augmenting (the sampling grid) or dropping input pixels."""

MARGIN = 1.1
"""The arrays' sum times this is their peak; measured peaks stay under it, and within 1.2x."""

KNOBS = {  # what to lower when a part is too large; parts without any are never named
    PROCESS: (),
    MNIST: (),
    STATE: ("model.hidden", "train.num_models"),
    CHECKPOINT: ("model.hidden", "train.num_models"),
    STEP: ("train.batch_size", "train.num_models"),
    EVALUATION: ("train.num_models", "model.hidden"),
}


def footprint(pipeline: Pipeline, devices: int = 1, sweep: bool = False,
              data_orders: int | None = None) -> dict[str, int]:
    """Bytes of each part of the run (see KNOBS for names): HOST_PARTS once for the process,
    the others for each of `devices` devices. `sweep` for a sweep's program of
    `train.num_models` grid points; `data_orders` its distinct seeds (all K unless given)."""
    total, model = pipeline.train.num_models, pipeline.model
    placement = placement_for(total, devices)
    k = placement.per_device if placement.split else total  # the models on one device
    copies = 2 if sweep or len(model_groups(total, devices)) > 1 else 1
    params = parameter_count(model) * FLOAT32
    state = k * (params + _optimizer_state_bytes(pipeline))
    widths = sum(layer_sizes(model)[1:])  # the units of one example
    batch = -(-pipeline.train.batch_size // placement.data_shards)
    dropout = model.dropout > 0 or model.input_dropout > 0
    units = UNIT_BUFFERS + DROPOUT_BUFFERS * dropout + SWEEP_BUFFERS * sweep
    images = 1 + IMAGE_BUFFERS * (augment.active(pipeline.augment) or model.input_dropout > 0)
    evaluated = max(pipeline.data.validation_size, SPLIT_SIZES["test"])
    return {
        PROCESS: PROCESS_BYTES,
        MNIST: (SPLIT_SIZES["train"] + SPLIT_SIZES["test"]) * NUM_PIXELS * FLOAT32,
        STATE: copies * state,
        CHECKPOINT: total * (params + _optimizer_state_bytes(pipeline)),
        STEP: k * (params + units * batch * widths * FLOAT32)
        + min(data_orders or k, k) * images * batch * NUM_PIXELS * FLOAT32,
        EVALUATION: k * evaluated * widths * FLOAT32,
    }


def peak_bytes(parts: dict[str, int], devices: int = 1, host: bool = True) -> int:
    """The peak of `devices` devices sharing one memory: the process's parts (unless the memory
    is an accelerator's, `host` False), data and state held throughout, and the two programs'
    working sets one at a time, with the MARGIN."""
    per_device = parts[MNIST] + parts[STATE] + max(parts[STEP], parts[EVALUATION])
    arrays = devices * per_device + (parts[CHECKPOINT] if host else 0)
    return int(arrays * MARGIN) + (parts[PROCESS] if host else 0)


def _optimizer_state_bytes(pipeline: Pipeline) -> int:
    """One model's optimizer slots, from tracing its init on shapes alone (nothing allocated)."""
    optimizer = optim.make_optimizer(pipeline.optimizer, pipeline.total_steps,
                                     pipeline.steps_per_epoch)
    # The key is made inside the trace too: nothing runs, so nothing compiles before the run.
    state = jax.eval_shape(
        lambda: optimizer.init(init_params(jax.random.PRNGKey(0), pipeline.model)))
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
