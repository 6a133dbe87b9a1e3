"""Where the seconds before the first trained epoch go: `python bench/cold_start.py`.

Runs the first epoch of a pipeline phase by phase, with the same library calls as
`digitsjax train`, in fresh processes: without the persistent compilation cache, with an empty
one (a first run), and with the one that run filled (every later run). Prints seconds per phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import PIPELINE, RESULT_PREFIX, T0_ENV, seconds_since_start

MODES = {"no compilation cache": "off", "empty cache (1st run)": None,
         "warm cache (later runs)": None}


def measure_phases(pipeline_path: str) -> dict[str, float]:
    """The first epoch of a run, one phase at a time, each timed to completion."""
    marks = {"python start-up": seconds_since_start()}
    last = time.perf_counter()

    def mark(phase: str) -> None:
        nonlocal last
        now = time.perf_counter()
        marks[phase] = now - last
        last = now

    import jax

    jax.devices()
    mark("import jax, start CPU backend")
    from digitsjax.core.config import load_pipeline
    from digitsjax.core.program import init_state, make_train_chunk, program_of
    from digitsjax.core.train import make_evaluate
    from digitsjax.run import checkpoint
    from digitsjax.run.compilation_cache import enable_compilation_cache
    from digitsjax.run.mnist import load_mnist

    enable_compilation_cache()
    mark("import digitsjax (optax, orbax, tqdm)")
    pipeline = load_pipeline(pipeline_path)
    data = load_mnist(pipeline.data)
    mark("load MNIST (decoded-array cache)")
    jax.jit(lambda x: x + 1)(0.0).block_until_ready()
    mark("first compilation of the process (a trivial one)")
    state = jax.block_until_ready(init_state(program_of(pipeline)))
    mark("initialise parameters (eager ops)")
    images, labels = jax.device_put((data.train_images, data.train_labels))
    test = jax.device_put((data.test_images, data.test_labels))
    jax.block_until_ready((images, test))
    mark("copy data to the device")
    train_chunk = make_train_chunk(program_of(pipeline)).lower(
        state, images, labels, num_steps=pipeline.steps_per_epoch).compile()
    mark("compile the epoch program")
    state, _ = jax.block_until_ready(train_chunk(state, images, labels))
    mark("train one epoch")
    jax.block_until_ready(make_evaluate(pipeline)(state.params, *test))
    mark("compile + run evaluation")
    with tempfile.TemporaryDirectory() as workdir:
        manager = checkpoint.open_manager(workdir, pipeline.checkpoint)
        checkpoint.save(manager, state, {"epoch": 1})
        manager.wait_until_finished()
        manager.close()
    mark("save the first checkpoint")
    marks["total"] = seconds_since_start()
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(PIPELINE))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(RESULT_PREFIX + json.dumps(measure_phases(args.pipeline)), flush=True)
        return

    cache_dir = tempfile.mkdtemp(prefix="cold-start-jax-")
    columns = {}
    for mode, setting in MODES.items():
        env = {**os.environ, "DIGITSJAX_COMPILATION_CACHE": setting or cache_dir,
               T0_ENV: repr(time.time())}
        proc = subprocess.run([sys.executable, __file__, "--child", "--pipeline", args.pipeline],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"cold_start: the measured run failed:\n{proc.stderr[-2000:]}")
        columns[mode] = json.loads(proc.stdout.split(RESULT_PREFIX)[-1])
    phases = list(next(iter(columns.values())))
    print("| phase | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for phase in phases:
        print(f"| {phase} | " + " | ".join(f"{c[phase]:.2f}" for c in columns.values()) + " |")
    print(f"(seconds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
