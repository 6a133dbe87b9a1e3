"""Where a large sweep program's time goes: its epochs, and the bookkeeping around them.

`python bench/sweep_bookkeeping.py [--points 1024] [--epochs 3] [--examples 1000]`

Trains one sweep program of `--points` mnist_mlp points (32 learning rates x points/32 seeds),
in this process, and prints the seconds of each phase of the run, timed where the run calls
it: loading the data, initialising the models, compiling and dispatching the chunks, waiting
for them (the epochs' arithmetic), evaluating, saving checkpoints, the fingerprints and the
summary. On a CPU the epochs of 1,024 models over the full data take minutes, so each split is
cut to its first `--examples` examples (1,000 training examples: 7 steps an epoch) and the
bookkeeping, which does not shrink with the data, stands out; `--examples 0` keeps the splits
whole, for an accelerator.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import jax

from digitsjax.apps import sweep
from digitsjax.core.config import load_pipeline
from digitsjax.run import checkpoint, loop

REPO = Path(__file__).resolve().parents[1]
SPENT: dict[str, float] = defaultdict(float)


def timed(name: str, function, block: bool = False):
    """`function`, adding its seconds (with `block`, until its result is computed) to `name`."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        if block:
            jax.block_until_ready(result)
        SPENT[name] += time.perf_counter() - start
        return result
    return run


def cut_splits(load, examples: int):
    """The loader, with every split cut to its first `examples` examples (0: whole)."""
    def load_cut(*args, **kwargs):
        data = load(*args, **kwargs)
        if not examples:
            return data
        return dataclasses.replace(data, **{
            f"{split}_{part}": getattr(data, f"{split}_{part}")[:examples]
            for split in ("val", "test") for part in ("images", "labels")})
    return load_cut


def instrument(examples: int) -> None:
    if examples:  # the memory check counts the splits whole
        loop.check_memory = sweep.check_memory = lambda *args, **kwargs: None
    loop.load_mnist = timed("data", cut_splits(loop.load_mnist, examples))
    loop.init_state = timed("init", loop.init_state, block=True)
    loop._Chunks.run = timed("compile and dispatch chunks", loop._Chunks.run)
    loop._Chunks.collect = timed("wait for the epochs", loop._Chunks.collect)
    evaluate = loop.make_evaluate
    loop.make_evaluate = lambda *a, **k: timed("evaluate", evaluate(*a, **k), block=True)
    checkpoint.save = timed("checkpoint.save", checkpoint.save)
    manager = checkpoint.ocp.CheckpointManager
    manager.wait_until_finished = timed("wait for saves to be written",
                                        manager.wait_until_finished)
    loop.fingerprints = timed("fingerprints", loop.fingerprints)
    sweep.write_summary = timed("summary", sweep.write_summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    rates = [round(1e-4 * 100 ** (i / 31), 7) for i in range(32)]
    seeds = list(range(max(1, args.points // len(rates))))
    train = [f"data.validation_size={60000 - args.examples}"] if args.examples else []
    base = load_pipeline(REPO / "pipelines" / "mnist_mlp.toml",
                         [*train, f"train.epochs={args.epochs}"])
    instrument(args.examples)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        sweep.run_sweep(base, {"optimizer.learning_rate": rates, "seed": seeds},
                        Path(workdir), echo=lambda _: None)
        total = time.perf_counter() - start
    points = len(rates) * len(seeds)
    print(f"| {points} points x {args.epochs} epochs, "
          f"{args.examples or 'all'} examples a split | seconds | share |")
    print("|---|---|---|")
    for name, seconds in sorted(SPENT.items(), key=lambda item: -item[1]):
        print(f"| {name} | {seconds:.1f} | {seconds / total:.0%} |")
    rest = total - sum(SPENT.values())
    print(f"| everything else | {rest:.1f} | {rest / total:.0%} |")
    print(f"| total | {total:.1f} | 100% |")


if __name__ == "__main__":
    main()
