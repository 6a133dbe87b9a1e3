"""How much memory a run needs, from its pipeline alone, before anything is allocated.

A run that does not fit would be killed by the operating system or fail deep inside XLA. The
estimate counts what dominates: the MNIST arrays on each device, the train state (parameters
and optimizer slots, K models), and the larger of the two programs' working sets, a training
step (gradients, the batch's activations) or an evaluation (a whole split's activations at
once). A sweep's program holds its train state twice: a chunk keeps the state it started from
until it knows no model diverged in it. So does a run whose models train in concurrent groups
(`model_groups`): the groups' states are joined into a new one at each chunk's end. It is an
estimate, not XLA's exact plan; it errs a little high.
"""

from __future__ import annotations

import jax

from digitsjax.core import optim
from digitsjax.core.config import Pipeline
from digitsjax.core.data import NUM_PIXELS, SPLIT_SIZES
from digitsjax.core.model import init_params, layer_sizes, parameter_count
from digitsjax.core.program import model_groups

FLOAT32 = 4

KNOBS = {  # what to lower when a part is too large
    "the parameters and optimizer state": ("model.hidden", "train.num_models"),
    "a training step": ("train.batch_size", "train.num_models"),
    "an evaluation": ("train.num_models", "model.hidden"),
    "MNIST": (),
}


def footprint(pipeline: Pipeline, devices: int = 1, sweep: bool = False) -> dict[str, int]:
    """Bytes each of `devices` devices needs for each part of the run (see KNOBS for names);
    `sweep` for a sweep's program of `train.num_models` grid points."""
    k, model = pipeline.train.num_models, pipeline.model
    copies = 2 if sweep or len(model_groups(k, devices)) > 1 else 1
    params = parameter_count(model) * FLOAT32
    widths = sum(layer_sizes(model)[1:])  # the activations of one example
    batch = -(-pipeline.train.batch_size // devices)
    evaluated = max(pipeline.data.validation_size, SPLIT_SIZES["test"])
    return {
        "MNIST": (SPLIT_SIZES["train"] + SPLIT_SIZES["test"]) * NUM_PIXELS * FLOAT32,
        "the parameters and optimizer state":
            copies * k * (params + _optimizer_state_bytes(pipeline)),
        "a training step": k * (params + 2 * batch * widths * FLOAT32),
        "an evaluation": k * evaluated * widths * FLOAT32,
    }


def peak_bytes(parts: dict[str, int]) -> int:
    """Data and state are held throughout; the two programs' working sets one at a time."""
    return (parts["MNIST"] + parts["the parameters and optimizer state"]
            + max(parts["a training step"], parts["an evaluation"]))


def _optimizer_state_bytes(pipeline: Pipeline) -> int:
    """One model's optimizer slots, from tracing its init on shapes alone (nothing allocated)."""
    optimizer = optim.make_optimizer(pipeline.optimizer, pipeline.total_steps,
                                     pipeline.steps_per_epoch)
    # The key is made inside the trace too: nothing runs, so nothing compiles before the run.
    state = jax.eval_shape(
        lambda: optimizer.init(init_params(jax.random.PRNGKey(0), pipeline.model)))
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(state))
