"""What a grid costs: a sweep trained as one program, beside the same points as K seeds of one
run and as separate runs, and split over several devices, each a whole `digitsjax` process
timed from launch to exit.

`make bench-sweeps [ARGS="--long --devices 2,4,8"]`, or `python bench/sweep_cost.py [--long]
[--devices N,...]`:
- nielsen: Nielsen's network at 8 learning rates for 1 epoch, three ways: `digitsjax sweep`
  (one program), one `train.num_models=8` run (8 seeds, the same program size), and 8 separate
  `digitsjax train` processes;
- with `--long`, also lr_sweep (mnist_mlp, 8 rates x 4 seeds, 15 epochs): the sweep against its
  32 separate runs, whether both name the same best point (by the sweep's own rule, the first
  in grid order among equals), how many points end at their separate run's fingerprint, and how
  the time splits between their epochs (the arithmetic, which one program does as much of as
  32 runs) and the rest.
- on simulated devices: the same sweep (Nielsen's 8 rates x 1 epoch; with `--long`, lr_sweep's
  32 points x 1 epoch) on 1 CPU device and on each count of `--devices` (default 4; a comma
  list, e.g. 2,4,8), each device count's seconds, their ratio to 1 device, how the models were
  placed (the run's own line) and how many points end at their 1-device fingerprint. The
  devices are XLA's simulated CPU devices (`--xla_force_host_platform_device_count`), which
  share the host's cores: this shows whether a split sweep's points keep their bits, and what
  the split costs in bookkeeping; a speed-up needs real devices, each with its own compute.
- with `--points N` (for an accelerator), only a grid of N points of mnist_mlp (learning rates
  x seeds) as one sweep over every device the process sees: its seconds from launch to exit,
  the seconds of its epochs, the training examples per second of both, and its placement.
Ratios come from one run on one machine. Every process shares one fresh compilation cache.
Nielsen's ways and the device counts each run once untimed before their timed run, so that all
are measured warm (compiled programs cached, files in the page cache), as a user's repeated
runs are. lr_sweep's two ways run once each, as a user's search does: the sweep compiles its
program, and the first of the 32 separate runs compiles what the other 31 read from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from digitsjax.apps.sweep import RESULTS_JSON, best_point
from digitsjax.run.records import read_metrics
from digitsjax.run.workdir import Workdir

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"


def timed(args: list[str], env: dict[str, str]) -> float:
    return timed_output(args, env)[0]


def timed_output(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """A digitsjax process's seconds from launch to exit, and what it printed."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "digitsjax", *args], check=True, cwd=REPO,
                          env=env, stdout=subprocess.PIPE, text=True)
    return time.monotonic() - start, done.stdout


PLACEMENT = re.compile(r"^\w+ backend, \d+ devices? \([^)]*\)(?:: (.*))?, matmul_precision",
                       re.MULTILINE)


def placement_of(output: str) -> str:
    """How a run placed its models, from its first line ("32 models over 4 devices, 8 each")."""
    found = PLACEMENT.search(output)
    return "?" if found is None else (found.group(1) or "1 model on 1 device")


def rates_of(sweep_file: Path) -> list[float]:
    return tomllib.loads(sweep_file.read_text())["sweep"]["optimizer"]["learning_rate"]


def warm_then_timed(commands: list[list[str]], root: Path, env: dict[str, str]) -> float:
    """Run the commands once untimed into scratch workdirs, then time them into fresh ones."""
    for i, command in enumerate(commands):
        timed([*command, "--workdir", str(root / "warm" / str(i))], env)
    return sum(timed([*command, "--workdir", str(root / "timed" / str(i))], env)
               for i, command in enumerate(commands))


def nielsen(root: Path, env: dict[str, str]) -> dict[str, float]:
    one_epoch = ["--set", "train.epochs=1"]
    rates = rates_of(PIPELINES / "nielsen_lr_sweep.toml")
    sweep = warm_then_timed([["sweep", str(PIPELINES / "nielsen_lr_sweep.toml"), *one_epoch]],
                            root / "sweep", env)
    seeds = warm_then_timed([["train", str(PIPELINES / "nielsen.toml"), *one_epoch, "--set",
                              "train.num_models=8"]], root / "k8", env)
    separate = warm_then_timed([["train", str(PIPELINES / "nielsen.toml"), *one_epoch, "--set",
                                 f"optimizer.learning_rate={rate}"] for rate in rates],
                               root / "separate", env)
    return {"sweep": sweep, "k8": seeds, "separate": separate}


def programs_records(sweep_dir: Path) -> list[dict]:
    """Every epoch record of a sweep's programs."""
    return [r for program in sorted(sweep_dir.glob("program-*")) for r in read_metrics(program)]


def epoch_seconds(records: list[dict]) -> float:
    return sum(r["epoch_seconds"] for r in records)


def lr_sweep(root: Path, env: dict[str, str]) -> dict[str, object]:
    """Both ways timed from launch to exit, the seconds of their epochs alone, their best
    points and how many points' fingerprints agree."""
    sweep_file = PIPELINES / "lr_sweep.toml"
    sweep = timed(["sweep", str(sweep_file), "--workdir", str(root / "sweep")], env)
    points = json.loads((root / "sweep" / RESULTS_JSON).read_text())["points"]
    separate, separate_epochs, runs = 0.0, 0.0, []
    for point in points:  # in grid order
        rate, seed = point["optimizer.learning_rate"], point["seed"]
        workdir = root / f"lr{rate}-s{seed}"
        separate += timed(["train", str(PIPELINES / "mnist_mlp.toml"), "--set",
                           f"optimizer.learning_rate={rate}", "--set", f"seed={seed}",
                           "--workdir", str(workdir)], env)
        records = read_metrics(workdir)
        separate_epochs += epoch_seconds(records)
        runs.append({"variant": point["variant"], "val_accuracy": records[-1]["val_accuracy"],
                     "diverged_at": None,
                     "params_sha256": Workdir.open(workdir).result["params_sha256"]})
    sweep_epochs = epoch_seconds(programs_records(root / "sweep"))
    return {"sweep": sweep, "separate": separate, "sweep_best": best_point(points)["variant"],
            "separate_best": best_point(runs)["variant"], "sweep_epochs": sweep_epochs,
            "separate_epochs": separate_epochs,
            "same_bits": sum(p["params_sha256"] == r["params_sha256"]
                             for p, r in zip(points, runs, strict=True))}


def big_grid(root: Path, env: dict[str, str], points: int) -> dict[str, float]:
    """mnist_mlp at 32 learning rates (1e-4 ... 1e-2) x points/32 seeds, one sweep, timed."""
    rates = [round(1e-4 * 100 ** (i / 31), 7) for i in range(32)]
    seeds = list(range(max(1, points // len(rates))))
    sweep_dir = root / "grid"
    seconds, output = timed_output(["sweep", str(PIPELINES / "mnist_mlp.toml"), "--grid",
                                    f"optimizer.learning_rate={rates}", "--grid",
                                    f"seed={seeds}", "--workdir", str(sweep_dir)], env)
    records = programs_records(sweep_dir)
    examples = sum(r["examples_per_second"] * r["epoch_seconds"] for r in records)
    epochs = epoch_seconds(records)
    return {"points": len(rates) * len(seeds), "seconds": seconds, "epoch_seconds": epochs,
            "examples": examples, "placement": placement_of(output)}


def print_big_grid(r: dict) -> None:
    print(f"placement: {r['placement']}\n")
    print(f"| mnist_mlp, {r['points']} points x 15 epochs | seconds | examples/s |")
    print("|---|---|---|")
    print(f"| launch to exit | {r['seconds']:.1f} | {r['examples'] / r['seconds']:,.0f} |")
    print(f"| its epochs | {r['epoch_seconds']:.1f} | "
          f"{r['examples'] / r['epoch_seconds']:,.0f} |", flush=True)


def print_nielsen(n: dict[str, float]) -> None:
    print("| nielsen, 8 learning rates x 1 epoch | seconds | sweep / this |")
    print("|---|---|---|")
    for label, key in (("digitsjax sweep (one program)", "sweep"),
                       ("one train.num_models=8 run", "k8"),
                       ("8 separate digitsjax train runs", "separate")):
        print(f"| {label} | {n[key]:.1f} | {n['sweep'] / n[key]:.2f} |", flush=True)


def print_lr_sweep(r: dict) -> None:
    print("\n| lr_sweep, 32 points x 15 epochs | seconds | sweep / this | best point |")
    print("|---|---|---|---|")
    print(f"| digitsjax sweep (one program) | {r['sweep']:.1f} | 1.00 | {r['sweep_best']} |")
    print(f"| 32 separate digitsjax train runs | {r['separate']:.1f} | "
          f"{r['sweep'] / r['separate']:.2f} | {r['separate_best']} |")
    print(f"\nTheir epochs alone (training, without evaluation): the sweep's "
          f"{r['sweep_epochs']:.1f} s, the separate runs' {r['separate_epochs']:.1f} s "
          f"({r['sweep_epochs'] / r['separate_epochs']:.2f}); outside their epochs, "
          f"{r['sweep'] - r['sweep_epochs']:.1f} s against "
          f"{r['separate'] - r['separate_epochs']:.1f} s.")
    print(f"Points whose fingerprint is their separate run's: {r['same_bits']} of 32.",
          flush=True)


def simulated_devices(env: dict[str, str], count: int) -> dict[str, str]:
    """`env` with `count` simulated CPU devices (and the CPU backend, also on an accelerator
    host); the other XLA flags are kept."""
    kept = [flag for flag in env.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")]
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(
        [*kept, f"--xla_force_host_platform_device_count={count}"])}


def on_devices(command: list[str], root: Path, env: dict[str, str],
               counts: list[int]) -> dict[int, dict]:
    """One sweep on 1 simulated device and on each of `counts`, each run once untimed, then
    timed: seconds, placement and each point's fingerprint by device count."""
    results = {}
    for count in [1, *(c for c in counts if c != 1)]:
        counted = simulated_devices(env, count)
        timed_output([*command, "--workdir", str(root / f"warm-{count}")], counted)
        workdir = root / f"timed-{count}"
        seconds, output = timed_output([*command, "--workdir", str(workdir)], counted)
        points = json.loads((workdir / RESULTS_JSON).read_text())["points"]
        results[count] = {"seconds": seconds, "placement": placement_of(output),
                          "prints": [point["params_sha256"] for point in points]}
    return results


def print_on_devices(title: str, results: dict[int, dict]) -> None:
    one = results[1]
    print(f"\n| {title} | seconds | this / 1 device | placement | points at their 1-device "
          "fingerprint |")
    print("|---|---|---|---|---|")
    for count, r in results.items():
        same = sum(a == b for a, b in zip(r["prints"], one["prints"], strict=True))
        print(f"| {count} device{'s' if count > 1 else ''} | {r['seconds']:.1f} | "
              f"{r['seconds'] / one['seconds']:.2f} | {r['placement']} | "
              f"{same} of {len(r['prints'])} |", flush=True)


def device_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of device counts, "
                                         "e.g. 4 or 2,4,8")
    return counts


def exit_on_sigterm() -> None:
    """`timeout` ends this process with SIGTERM (bench/gpu_check.sh bounds each step so): exit
    through Python, so that the digitsjax process it waits on is killed with it, where it would
    otherwise train on, orphaned, beside the next step."""
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))


def main() -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="also lr_sweep (about 15 minutes)")
    parser.add_argument("--points", type=int, metavar="N",
                        help="only a sweep of N mnist_mlp points (a multiple of 32)")
    parser.add_argument("--devices", type=device_counts, default=[4], metavar="N[,N...]",
                        help="the simulated CPU device counts to compare with 1 (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "DIGITSJAX_COMPILATION_CACHE": str(root / "cache")}
        if args.points:
            print_big_grid(big_grid(root, env, args.points))
            return 0
        print_nielsen(nielsen(root / "nielsen", env))
        if args.long:
            print_lr_sweep(lr_sweep(root / "lr", env))
        name = "lr_sweep" if args.long else "nielsen_lr_sweep"
        command = ["sweep", str(PIPELINES / f"{name}.toml"), "--set", "train.epochs=1"]
        title = (f"{name}, {'32 points' if args.long else '8 learning rates'} x 1 epoch, "
                 "simulated CPU devices")
        print_on_devices(title, on_devices(command, root / "devices", env, args.devices))
    return 0


if __name__ == "__main__":
    sys.exit(main())
