"""Whether the memory estimate holds: each shape's real peak RSS against its estimate.

`python bench/memory_estimate.py [--only WORD ...] [--list]`: for a spread of shapes (hidden
widths from 16 to 8192, one and two layers, batches from 32 to 55,000, several models, a sweep's
program, an evaluation of a large split), run the real `digitsjax train` (or `sweep`) for one
epoch in a process of its own, one at a time, with no compilation cache (a first run compiles
its programs, and compiling takes memory), and read that process's peak resident set from
`wait4`. Beside it, the estimate `resources.estimated_peak_bytes` makes for the same pipeline
before anything is allocated (what `check_memory` compares with the limit). The table:
shape, estimate, peak, estimate / peak; the estimate should never be below the peak.

The largest shape needs about 7 GB, so the shapes run one after another; the whole bench takes
a few minutes on 2 CPU cores. `--only 8192` runs the shapes whose label holds "8192".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "pipelines" / "mnist_mlp.toml"
sys.path.insert(0, str(REPO))  # digitsjax from this checkout, also without `pip install -e`

# (label, grid of a sweep or None, overrides); every shape trains one epoch.
SHAPES = [
    ("784-16-10, batch 32", None, ["model.hidden=[16]", "train.batch_size=32"]),
    ("784-128-64-10, batch 128", None, []),
    ("784-1024-10, batch 1024", None, ["model.hidden=[1024]", "train.batch_size=1024"]),
    ("784-8192-10, batch 128", None, ["model.hidden=[8192]", "train.batch_size=128"]),
    ("784-16-10, batch 55000", None, ["model.hidden=[16]", "train.batch_size=55000"]),
    ("784-2048-10, batch 55000", None, ["model.hidden=[2048]", "train.batch_size=55000"]),
    ("784-8192-10, batch 55000", None, ["model.hidden=[8192]", "train.batch_size=55000"]),
    ("784-2048-2048-10, batch 16384", None, ["model.hidden=[2048, 2048]",
                                             "train.batch_size=16384"]),
    ("784-8192-10, batch 1000, val 59000", None, ["model.hidden=[8192]",
                                                  "train.batch_size=1000",
                                                  "data.validation_size=59000"]),
    ("K=4 784-1024-10, batch 8192", None, ["model.hidden=[1024]", "train.batch_size=8192",
                                           "train.num_models=4"]),
    ("K=32 784-128-64-10, batch 4096", None, ["train.batch_size=4096", "train.num_models=32"]),
    ("sweep 4 lr 784-16-10, batch 128", {"optimizer.learning_rate": [1e-4, 3e-4, 1e-3, 3e-3]},
     ["model.hidden=[16]"]),
    ("sweep 4 lr 784-1024-10, batch 8192", {"optimizer.learning_rate": [1e-4, 3e-4, 1e-3, 3e-3]},
     ["model.hidden=[1024]", "train.batch_size=8192"]),
    ("784-1024-1024-10 dropout, elastic, batch 16384", None, [
        "model.hidden=[1024, 1024]", "train.batch_size=16384", "data.validation_size=43616",
        "model.dropout=0.5", "model.input_dropout=0.2", "augment.elastic_alpha=36.0",
        "augment.rotation=10.0"]),
]
COMMON = ["train.epochs=1"]


def estimate(grid: dict | None, overrides: list[str]) -> int:
    """The estimate check_memory makes for this shape, on this machine's devices."""
    from digitsjax.core import sharding
    from digitsjax.core.config import load_pipeline
    from digitsjax.core.hyper import with_values
    from digitsjax.run.resources import estimated_peak_bytes

    pipeline = load_pipeline(PIPELINE, [*COMMON, *overrides])
    mesh = sharding.data_mesh()
    if grid is None:
        return estimated_peak_bytes(pipeline, mesh, sweep=False)
    points = 1
    for values in grid.values():
        points *= len(values)
    orders = len(grid["seed"]) if "seed" in grid else 1
    return estimated_peak_bytes(with_values(pipeline, {"train.num_models": points}), mesh,
                                sweep=True, data_orders=orders)


def peak_rss(grid: dict | None, overrides: list[str]) -> tuple[int, float]:
    """(peak resident bytes, seconds) of one `digitsjax` process training this shape."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "digitsjax", "sweep" if grid else "train", str(PIPELINE),
                   "--workdir", str(Path(workdir) / "run")]
        command += [f"--grid={key}={values}" for key, values in (grid or {}).items()]
        command += [f"--set={o}" for o in [*COMMON, *overrides]]
        # Compiling is part of a first run's peak: no cached programs.
        env = {**os.environ, "PYTHONPATH": str(REPO), "DIGITSJAX_COMPILATION_CACHE": "off"}
        start = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        errors = child.stderr.read()
        if child.returncode:
            raise SystemExit(f"{' '.join(command)} exited {child.returncode}:\n{errors}")
    return usage.ru_maxrss * 1024, seconds  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], metavar="WORD",
                        help="run only the shapes whose label holds one of these")
    parser.add_argument("--list", action="store_true", help="print the estimates alone")
    args = parser.parse_args()
    shapes = [s for s in SHAPES if not args.only or any(w in s[0] for w in args.only)]
    print("| shape | estimate GiB | peak RSS GiB | estimate / peak | seconds |")
    print("|---|---|---|---|---|")
    for label, grid, overrides in shapes:
        estimated = estimate(grid, overrides)
        if args.list:
            print(f"| {label} | {estimated / 2**30:.2f} | | | |", flush=True)
            continue
        peak, seconds = peak_rss(grid, overrides)
        print(f"| {label} | {estimated / 2**30:.2f} | {peak / 2**30:.2f} | "
              f"{estimated / peak:.2f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
