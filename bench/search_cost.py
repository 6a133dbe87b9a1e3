"""What a search costs, and what it finds: lr_sweep's 32 points searched as a full grid and by
successive halving, and lr_pbt's population of 16, side by side in one run, each a whole
`digitsjax sweep` process timed from launch to exit.

`make bench-sweeps` (first), or `python bench/sweep_cost.py` for the rest; here
`python bench/search_cost.py`. For each way: its wall seconds and their ratio to the grid's,
the model-epochs it trained (a model of a program trained for an epoch counts one, whichever
stage), the point it picks by validation accuracy, that point's test accuracy, and whether the
point ends at the fingerprint the grid gave it (a population's members are not the grid's
points: no such fingerprint). The ways run one after the other on the same
machine, each with a compilation cache of its own, so that neither reads what the other
compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from digitsjax.apps.sweep import RESULTS_JSON, SWEEP_JSON
from digitsjax.run.records import read_metrics
from digitsjax.run.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]
WAYS = {"grid": "lr_sweep.toml", "successive halving": "lr_halving.toml",
        "population-based training": "lr_pbt.toml"}


def searched(pipeline: Path, sweep_dir: Path, cache: Path) -> dict[str, object]:
    """One search, timed from launch to exit, and what it trained and picked."""
    env = {**os.environ, "DIGITSJAX_COMPILATION_CACHE": str(cache)}
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "digitsjax", "sweep", str(pipeline), "--workdir",
                    str(sweep_dir)], check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    results = json.loads((sweep_dir / RESULTS_JSON).read_text())
    best = next(p for p in results["points"] if p["variant"] == results["best"])
    return {"seconds": seconds, "model_epochs": model_epochs(sweep_dir),
            "best": best["variant"], "test_accuracy": best["test_accuracy"],
            "params_sha256": best["params_sha256"],
            "fingerprints": {p["variant"]: p["params_sha256"] for p in results["points"]}}


def model_epochs(sweep_dir: Path) -> int:
    """The epochs each workdir of the sweep trained, times its models."""
    workdirs = {e["workdir"] for e in json.loads((sweep_dir / SWEEP_JSON).read_text())["variants"]
                for e in e.get("stages", [e])}
    return sum(Workdir.open(sweep_dir / w).program.num_models * len(read_metrics(sweep_dir / w))
               for w in workdirs)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        found = {way: searched(REPO / "pipelines" / name, root / way, root / f"cache-{i}")
                 for i, (way, name) in enumerate(WAYS.items())}
    grid = found["grid"]
    print("| mnist_mlp, 15 epochs | seconds | / grid | model-epochs | picks by validation | "
          "its test accuracy | its fingerprint is the grid's |")
    print("|---|---|---|---|---|---|---|")
    for way, result in found.items():
        same = "—" if result["best"] not in grid["fingerprints"] else \
            "yes" if result["params_sha256"] == grid["fingerprints"][result["best"]] else "NO"
        print(f"| {way} (`pipelines/{WAYS[way]}`) | {result['seconds']:.1f} | "
              f"{result['seconds'] / grid['seconds']:.2f} | {result['model_epochs']} | "
              f"{result['best']} | {100 * result['test_accuracy']:.2f}% | "
              f"{same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
