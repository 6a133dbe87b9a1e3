"""One pipeline trained by `digitsjax train` on 1 device, D devices and 2 processes of D/2 devices.

Prints each run's wall time (process start to exit, so compilation and checkpoints included)
and how far its parameters and test accuracy land from the 1-device run. On a CPU host the D
devices are simulated (XLA_FLAGS) and share the cores: expect overhead, not speed-up.

    python bench/topologies.py [PIPELINE] [--devices 8] [--set KEY=VALUE]...
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from digitsjax.run.records import read_metrics
from digitsjax.run.trained import load_network


def launch(args: list[str], devices: int, extra_env: dict[str, str] | None = None):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "digitsjax", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_all(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        _, stderr = p.communicate()
        if p.returncode:
            sys.exit(f"a run failed:\n{stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="pipelines/mnist_mlp.toml")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="digitsjax-topologies-"))
    common = [args.pipeline, *(a for o in args.overrides for a in ("--set", o))]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    half = args.devices // 2
    topologies = {
        "1 device": lambda w: [launch([*common, "--workdir", w], 1)],
        f"{args.devices} devices": lambda w: [launch([*common, "--workdir", w], args.devices)],
        f"2 processes x {half}": lambda w: [
            launch([*common, "--workdir", w, "--coordinator-address", address,
                    "--num-processes", "2", "--process-id", str(i)], half)
            for i in range(2)],
    }
    walls = {}
    for name, start in topologies.items():
        started = time.perf_counter()
        wait_all(start(str(root / name.replace(" ", "_"))))
        walls[name] = time.perf_counter() - started

    reference = next(iter(topologies))
    ref_params = jax.tree.leaves(load_network(root / reference.replace(" ", "_")).params)
    ref_accuracy = read_metrics(root / reference.replace(" ", "_"))[-1]["test_accuracy"]
    print(f"{args.pipeline} {' '.join(args.overrides)}  (workdirs in {root})")
    for name in topologies:
        workdir = root / name.replace(" ", "_")
        params = jax.tree.leaves(load_network(workdir).params)
        accuracy = read_metrics(workdir)[-1]["test_accuracy"]
        max_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params, ref_params,
                                                                   strict=True))
        rel_l2 = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(params, ref_params,
                                                                          strict=True))
                               / sum(np.sum(b ** 2) for b in ref_params)))
        print(f"  {name:>16}: wall {walls[name]:6.1f} s (x{walls[name] / walls[reference]:.2f})"
              f"  test_acc {100 * accuracy:.2f}% ({100 * (accuracy - ref_accuracy):+.2f} pp)"
              f"  max|dparam| {max_diff:.1e}  rel L2 {rel_l2:.1e}")


if __name__ == "__main__":
    main()
