"""Where an epoch of `lr_sweep`'s program goes: its XLA operations by time, from a profile.

`python bench/program_profile.py [--top 15] [--single]`

Compiles the program of `pipelines/lr_sweep.toml` (mnist_mlp, 8 learning rates x 4 seeds, as
`digitsjax sweep` builds it), runs one epoch to warm up, then traces one more with the JAX
profiler and sums each operation's time over the epoch's steps. Each row names the operation
as the compiled program does, its kind and its output's shape, so that `dot f32[32,784,128]` is
the 32 models' first-layer weight gradients. Operations may run side by side on the cores, so
the shares are of the operations' summed time, not of the epoch's. Random pixels stand in for
MNIST (an epoch's arithmetic does not depend on them). `--single` profiles one mnist_mlp run's
epoch instead, the program each of the 32 points would be alone.
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path

import jax
from common import lr_sweep_program, random_training_set

from digitsjax.core.config import Pipeline
from digitsjax.core.program import init_state, make_train_chunk, program_of

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+\[[\d,]*\])\S* ([\w\-]+)\(")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15, help="rows to print")
    parser.add_argument("--single", action="store_true", help="one mnist_mlp run instead")
    args = parser.parse_args()
    program = lr_sweep_program()
    if args.single:
        program = program_of(program.model(0))
    images, labels = random_training_set(program.pipeline.train_size)
    state = init_state(program)
    steps = program.pipeline.steps_per_epoch
    compiled = make_train_chunk(program).lower(
        state, images, labels, num_steps=steps).compile()
    state, sums = compiled(state, images, labels)
    jax.block_until_ready(sums)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        state, sums = compiled(state, images, labels)
        jax.block_until_ready(sums)
        epoch = time.perf_counter() - start
        jax.profiler.stop_trace()
        known = instructions(compiled.as_text())
        seconds = operation_seconds(trace_dir, known)
    print_table(seconds, known, program, epoch, args.top)


def instructions(hlo: str) -> dict[str, tuple[str, str]]:
    """Each instruction's name -> (its kind, its output's shape), from the compiled program."""
    found = {}
    for line in hlo.splitlines():
        match = INSTRUCTION.match(line)
        if match:
            name, shape, opcode = match.groups()
            custom = re.search(r'"kind":"(__\w+)"', line)
            kind = re.search(r"kind=k(\w+)", line)
            found[name] = (custom.group(1) if custom else
                           f"{opcode} ({kind.group(1).lower()})" if kind else opcode, shape)
    return found


def operation_seconds(trace_dir: str, known: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Seconds spent in each of the program's operations, over every thread of the trace."""
    trace = next(Path(trace_dir).rglob("*.xplane.pb"))
    seconds: dict[str, float] = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(str(trace)).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in known:
                    seconds[event.name] += event.duration_ns / 1e9
    return seconds


def print_table(seconds: dict[str, float], known: dict[str, tuple[str, str]],
                program: Pipeline, epoch: float, top: int) -> None:
    total, steps = sum(seconds.values()), program.steps_per_epoch
    models = program.train.num_models
    print(f"One epoch of {models} mnist_mlp model{'s' * (models > 1)}: {epoch:.2f} s, {steps} "
          f"steps; the operations summed {total:.2f} s over all threads.\n")
    print("| operation | kind | output | ms a step | share |")
    print("|---|---|---|---|---|")
    ranked = sorted(seconds.items(), key=lambda item: -item[1])
    for name, value in ranked[:top]:
        kind, shape = known[name]
        print(f"| {name} | {kind} | {shape} | {1e3 * value / steps:.2f} | {value / total:.0%} |")
    rest = sum(value for _, value in ranked[top:])
    print(f"| {len(ranked) - top} others | | | {1e3 * rest / steps:.2f} | {rest / total:.0%} |")
    by_kind: dict[str, float] = collections.Counter()
    for name, value in seconds.items():
        by_kind[known[name][0]] += value
    print("\n| kind | ms a step | share |\n|---|---|---|")
    for kind, value in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {1e3 * value / steps:.2f} | {value / total:.0%} |")


if __name__ == "__main__":
    main()
